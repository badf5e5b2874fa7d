#!/usr/bin/env python
"""Convert OpenGVLab VideoMamba video checkpoints (videomamba_t16 / s16 / m16, Kinetics / SSv2 fine-tuned) into
`DartVideoMambaForVideoClassification` folders.

    # plain VideoMamba behaviour (constant scores: the standard 16x16 patch grid at 224 with 196 tokens per frame)
    python conversion/convert_videomamba_original.py --checkpoint videomamba_t16_k400_f8_res224.pth \
        --output_dir dart-videomamba-t16-k400 --uniform_scorer --labels_file kinetics400_labels.txt

    # DART tokens: the scorer (weights and settings) taken from a converted DART folder, e.g. dart-vim-ti
    python conversion/convert_videomamba_original.py --checkpoint videomamba_t16_k400_f8_res224.pth \
        --output_dir dart-videomamba-t16-k400-dart --scorer_from dart-vim-ti [--num_tokens 98]

    # the authors' DART VideoMamba with motion tokens (dvideomamba_*: VideoMamba plus patch_embed.score_backbone.*,
    # patch_embed.score_head{1,2}.*): the motion scorer comes from the checkpoint, no scorer flag
    python conversion/convert_videomamba_original.py --checkpoint dvideomamba_t16_k400_f8.pth \
        --output_dir dart-videomamba-t16-k400-motion --num_tokens 392 --verify

Width, depth, frames, classes and the Mamba sizes are read from the checkpoint (t16: width 192, s16: 384, m16: 576;
depth from `layers.N`; frames from `temporal_pos_embedding`; classes from `head`). The checkpoint is read with
`torch.load(..., weights_only=True)` by the loader the other converters use: like the original loader it takes the
first of `--model_key` (default `model|module`) that is present, else a bare state dict (for `model` / `module`), and
strips the `backbone.` / `encoder.` (and `module.`) prefixes. Every key is accounted for: each tensor maps to exactly
one parameter of the converted model, and each parameter outside the scorer is filled; any missing, unexpected or
mis-shaped key, a non-finite weight, or a `--scorer_from` folder with a missing tensor is an error (exit code 2). The
scorer takes every scorer setting of the `--scorer_from` config (`scorer_*`, `score_*`, `freeze_scorer_trunk`).

Key mapping (original -> converted):
    patch_embed.proj.weight (D, C, 1, P, P) Conv3d -> dart.embeddings.projection.weight (D, C, P, P) ([:, :, 0])
    patch_embed.proj.bias                        -> dart.embeddings.projection.bias
    cls_token / pos_embed (1, 1 + g*g, D)        -> dart.embeddings.cls_token / dart.embeddings.position_embeddings
    temporal_pos_embedding (1, T, D)             -> dart.temporal_position_embeddings
    layers.{i}.mixer.* / layers.{i}.norm.weight  -> dart.encoder.layers.{i}.mixer.* / .norm.weight
    norm_f.weight                                -> dart.encoder.norm_f.weight
    head.{weight,bias}                           -> classifier.{weight,bias}

A dvideomamba_* checkpoint (the motion tokeniser, `DynamicVideoPatchEmbed`) converts to `video_tokenizer="motion"` with
the original's settings (`MOTION_PARITY_OPTIONS`: frame 0 scored 0.5, `int(sqrt(N/T)*T)` token rows) and adds:
    patch_embed.score_backbone.features.{0..7}.* -> dart.embeddings.scorer.features.{0..7}.* (MobileNetV3-Small)
    patch_embed.score_backbone.features.{8..10}.* left out: the original runs them and discards their output (the
                                                  scores use `features[:8]`); they are checked against the trunk's
                                                  shapes and listed in the report
    patch_embed.score_head1.{weight,bias}        -> dart.embeddings.scorer.motion_proj.* (on frame differences)
    patch_embed.score_head2.{weight,bias}        -> dart.embeddings.scorer.context_proj.* (on the clip mean)
The token budget is not stored in the checkpoint: `--num_tokens` (default frames * 196, one token per patch).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from conversion.convert_dart_original import write_verify_and_push  # noqa: E402
from modeling_dart.conversion_utils import (  # noqa: E402
    ConversionError,
    UsageError,
    account_keys,
    check_output_dir,
    compile_rules,
    infer_mamba_sizes,
    load_complete_model,
    load_original_checkpoint,
    positive_int,
    rename_key,
    report_usage_error,
    require_tensor,
)
from modeling_dart.configuration_dart import MOTION_PARITY_OPTIONS, MOTION_TRUNK_DEPTHS  # noqa: E402
from modeling_dart.trunk_tables_dart import TRUNKS  # noqa: E402
from modeling_dart.trunks_dart import ScorerTrunk  # noqa: E402
from modeling_dart import (  # noqa: E402
    DartConfig,
    DartForImageClassification,
    DartVideoMambaForVideoClassification,
    DartVideoProcessor,
)

ORIGINAL_REPO = "https://github.com/OpenGVLab/VideoMamba"
SCORER_PREFIX = "dart.embeddings.scorer."
KNOWN_WIDTHS = {192: "videomamba_t16", 384: "videomamba_s16", 576: "videomamba_m16"}

KEY_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)$", r"dart.embeddings.projection.\1"),
    (r"cls_token$", r"dart.embeddings.cls_token"),
    (r"pos_embed$", r"dart.embeddings.position_embeddings"),
    (r"temporal_pos_embedding$", r"dart.temporal_position_embeddings"),
    (r"layers\.(\d+)\.mixer\.(.+)$", r"dart.encoder.layers.\1.mixer.\2"),
    (r"layers\.(\d+)\.norm\.weight$", r"dart.encoder.layers.\1.norm.weight"),
    (r"norm_f\.weight$", r"dart.encoder.norm_f.weight"),
    (r"head\.(weight|bias)$", r"classifier.\1"),
]
_COMPILED_RULES = compile_rules(KEY_RULES)

# dvideomamba_*: the motion tokeniser's keys on top of VideoMamba's
MOTION_PREFIX = "patch_embed.score_"
MOTION_TRUNK = "mobilenet_v3_small"
MOTION_TRUNK_PREFIX = "patch_embed.score_backbone."
MOTION_KEY_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.score_backbone\.(features\.\d+\..+)$", r"dart.embeddings.scorer.\1"),
    (r"patch_embed\.score_head1\.(weight|bias)$", r"dart.embeddings.scorer.motion_proj.\1"),
    (r"patch_embed\.score_head2\.(weight|bias)$", r"dart.embeddings.scorer.context_proj.\1"),
] + KEY_RULES
_COMPILED_MOTION_RULES = compile_rules(MOTION_KEY_RULES)


def convert_key(key: str) -> str | None:
    """The converted name of an original key, or None when no rule matches."""
    return rename_key(key, _COMPILED_RULES)


def convert_motion_key(key: str) -> str | None:
    """The converted name of a dvideomamba key, or None when no rule matches."""
    return rename_key(key, _COMPILED_MOTION_RULES)


def is_motion_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the checkpoint holds the motion tokeniser (`patch_embed.score_*` keys: a dvideomamba_* file)."""
    return any(key.startswith(MOTION_PREFIX) for key in state_dict)


def split_motion_trunk(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Check the motion scorer of a dvideomamba checkpoint and split off the trunk entries it does not use.

    The trunk must be MobileNetV3-Small (`features.*` keys and shapes of torchvision's, checked against the whole
    trunk) and the score heads two `Linear(48, 48)` (the channels of `features[:8]`, the original's cut). Returns the
    state dict without the entries at and beyond the cut (the original runs them and discards their output) and the
    names of the keys left out. Raises `ConversionError` naming the key that does not fit.
    """
    depth = MOTION_TRUNK_DEPTHS[MOTION_TRUNK]
    channels = TRUNKS[MOTION_TRUNK].output_channels(depth)
    for name in ("score_head1", "score_head2"):
        weight = require_tensor(state_dict, f"patch_embed.{name}.weight", 2, "a dvideomamba checkpoint")
        if tuple(weight.shape) != (channels, channels):
            raise ConversionError(f"patch_embed.{name}.weight has shape {tuple(weight.shape)}; the motion tokeniser's "
                                  f"heads are Linear({channels}, {channels}) on MobileNetV3-Small features[:{depth}].")
    reference = ScorerTrunk(MOTION_TRUNK, TRUNKS[MOTION_TRUNK].num_entries).features.state_dict()
    kept, left_out = {}, []
    for key, tensor in state_dict.items():
        if not key.startswith(MOTION_TRUNK_PREFIX):
            kept[key] = tensor
            continue
        name = key.removeprefix(MOTION_TRUNK_PREFIX)
        parts = name.split(".")
        inner = ".".join(parts[1:])
        if parts[0] != "features" or inner not in reference:
            raise ConversionError(f"{key} is not a tensor of a MobileNetV3-Small trunk (the motion tokeniser's "
                                  "score_backbone).")
        if tuple(tensor.shape) != tuple(reference[inner].shape):
            raise ConversionError(f"{key}: checkpoint {tuple(tensor.shape)} vs MobileNetV3-Small "
                                  f"{tuple(reference[inner].shape)}.")
        if int(parts[1]) >= depth:
            left_out.append(key)
        else:
            kept[key] = tensor
    return kept, sorted(left_out)


def scorer_config_fields(config) -> list[str]:
    """The config fields that describe the scorer: `scorer`, every `scorer_*` / `score_*` field and
    `freeze_scorer_trunk` (a field added to the scorer later is included by its name)."""
    return sorted(name for name in config.to_dict() if "scorer" in name or name.startswith("score_"))


def _require(state_dict: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    return require_tensor(state_dict, key, ndim, "a VideoMamba video checkpoint")


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> dict:
    """DartConfig keyword arguments describing the checkpoint's backbone (width, depth, frames, classes, sizes)."""
    patch = _require(state_dict, "patch_embed.proj.weight", 5)  # Conv3d (D, C, t, P, P)
    hidden, channels, tubelet, patch_h, patch_w = patch.shape
    if tubelet != 1:
        raise ConversionError(f"patch_embed.proj.weight has a temporal kernel of {tubelet}; only tubelet size 1 "
                              "(kernel (1, P, P), all released VideoMamba models) is supported.")
    if patch_h != patch_w:
        raise ConversionError(f"non-square patches {patch_h}x{patch_w} are not supported.")
    pos = _require(state_dict, "pos_embed", 3)
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ConversionError(f"pos_embed has {pos.shape[1]} rows; expected 1 + g*g (a cls row and a square grid).")
    temporal = _require(state_dict, "temporal_pos_embedding", 3)
    head = _require(state_dict, "head.weight", 2)
    return dict(
        hidden_size=hidden,
        num_channels=channels,
        patch_size=patch_h,
        score_grid_size=grid,
        num_frames=temporal.shape[1],
        num_labels=head.shape[0],
        **infer_mamba_sizes(state_dict, hidden, "a VideoMamba video checkpoint"),
    )


def read_labels(labels_file: str | Path | None, wrapper: dict, num_labels: int) -> dict[int, str]:
    """id2label from `--labels_file` (one label per line, or JSON: `{id: label}` or a list), else from the checkpoint
    wrapper (`id2label`, `classes`, `class_names` or `labels`), else `LABEL_i`."""
    labels = None
    if labels_file is not None:
        path = Path(labels_file)
        if not path.is_file():
            raise ConversionError(f"labels file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise ConversionError(f"{path} is not valid JSON: {error}") from error
            if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
                data = data["id2label"]
            if isinstance(data, dict):
                try:
                    labels = {int(k): str(v) for k, v in data.items()}
                except ValueError as error:
                    raise ConversionError(f"{path}: id2label keys must be integers ({error})") from error
            elif isinstance(data, list):
                labels = {i: str(v) for i, v in enumerate(data)}
            else:
                raise ConversionError(f"{path} must hold a JSON object {{id: label}} or a list of labels.")
        else:
            lines = [line.strip() for line in text.splitlines()]
            while lines and not lines[-1]:
                lines.pop()
            if any(not line for line in lines):
                raise ConversionError(f"{path} has empty lines; expected one label per line.")
            labels = dict(enumerate(lines))
        source = str(path)
    else:
        for key in ("id2label", "classes", "class_names", "labels"):
            value = wrapper.get(key)
            if isinstance(value, dict):
                labels, source = {int(k): str(v) for k, v in value.items()}, f"checkpoint[{key!r}]"
                break
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                labels, source = dict(enumerate(value)), f"checkpoint[{key!r}]"
                break
    if labels is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    if sorted(labels) != list(range(num_labels)):
        raise ConversionError(f"{source} gives {len(labels)} labels (ids {min(labels)}..{max(labels)}) but the "
                              f"checkpoint's head has {num_labels} classes.")
    return labels


def load_scorer(folder: str | Path):
    """The config and `dart.embeddings.scorer.*` tensors of a converted DART image folder (e.g. dart-vim-ti). The
    folder must load completely: a missing, unexpected or mis-shaped tensor is an error naming `--scorer_from`."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ConversionError(f"--scorer_from {folder}: no config.json (expected a converted DART folder).")
    model = load_complete_model(DartForImageClassification, folder, "--scorer_from")
    config = model.config
    if config.scorer != "learned":
        raise ConversionError(f"--scorer_from {folder}: its scorer is {config.scorer!r}, it has no scorer weights.")
    tensors = {k: v for k, v in model.state_dict().items() if k.startswith(SCORER_PREFIX)}
    if not tensors:
        raise ConversionError(f"--scorer_from {folder}: no {SCORER_PREFIX}* tensors in its weights.")
    return config, tensors


# ------------------------------------------------------------------------------------------------ conversion
def convert_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map every original key onto `model` (scorer excluded); raise on unmatched, missing or mis-shaped keys."""
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(SCORER_PREFIX)}

    def adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key == "patch_embed.proj.weight" and tensor.dim() == 5:
            return tensor[:, :, 0]  # Conv3d kernel (1, P, P) -> Conv2d kernel (P, P)
        return tensor

    return account_keys(state_dict, expected, convert_key, "a VideoMamba model", adapt)


def convert_motion_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map every key of a dvideomamba checkpoint (the unused trunk entries already split off) onto `model`, scorer
    included; raise on unmatched, missing or mis-shaped keys."""

    def adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key == "patch_embed.proj.weight" and tensor.dim() == 5:
            return tensor[:, :, 0]
        return tensor

    return account_keys(state_dict, model.state_dict(), convert_motion_key, "a DART VideoMamba model with motion tokens",
                        adapt)


def convert(
    checkpoint: str | Path,
    scorer_from: str | Path | None = None,
    uniform_scorer: bool = False,
    labels_file: str | Path | None = None,
    model_key: str = "model|module",
    num_tokens: int | None = None,
    image_size: int | None = None,
    video_score_pooling: str = "frame",
):
    """Return `(model, processor, report)` for a VideoMamba checkpoint (a dvideomamba_* one: the motion tokeniser)."""
    for name, value in (("num_tokens", num_tokens), ("image_size", image_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name} must be a positive integer, got {value!r}.")
    state_dict, wrapper = load_original_checkpoint(checkpoint, model_key, strip_prefixes=("backbone.", "encoder."),
                                                   return_wrapper=True)
    if is_motion_checkpoint(state_dict):
        if uniform_scorer or scorer_from is not None:
            raise ConversionError(f"{checkpoint} is a DART VideoMamba checkpoint with its own motion scorer "
                                  "(patch_embed.score_* keys): drop --uniform_scorer / --scorer_from.")
        return convert_motion(state_dict, wrapper, checkpoint, labels_file, num_tokens, image_size)
    if uniform_scorer == (scorer_from is not None):
        raise ConversionError("choose exactly one of --uniform_scorer and --scorer_from DIR (a dvideomamba checkpoint, "
                              "with patch_embed.score_* keys, needs neither).")
    arch = infer_architecture(state_dict)
    base = arch["score_grid_size"] * arch["patch_size"]
    kwargs = dict(arch, backbone="videomamba", image_size=base if image_size is None else image_size,
                  num_tokens=arch["score_grid_size"] ** 2 if num_tokens is None else num_tokens,
                  video_score_pooling=video_score_pooling,
                  residual_in_fp32=True, layer_norm_epsilon=1e-5, tubelet_size=1)
    scorer_tensors = None
    if uniform_scorer:
        kwargs["scorer"] = "uniform"
    else:
        scorer_config, scorer_tensors = load_scorer(scorer_from)
        for field in ("score_grid_size", "patch_size", "num_channels"):
            if getattr(scorer_config, field) != kwargs[field]:
                raise ConversionError(f"--scorer_from {scorer_from}: {field}={getattr(scorer_config, field)} but the "
                                      f"VideoMamba checkpoint has {field}={kwargs[field]}.")
        kwargs.update({field: getattr(scorer_config, field) for field in scorer_config_fields(scorer_config)})
    config = video_config(kwargs, labels_file, wrapper)

    model = DartVideoMambaForVideoClassification(config).eval()
    converted = convert_state_dict(state_dict, model)
    if scorer_tensors is not None:
        expected = {k: v for k, v in model.state_dict().items() if k.startswith(SCORER_PREFIX)}
        missing = sorted(set(expected) - set(scorer_tensors))
        unexpected = sorted(set(scorer_tensors) - set(expected))
        mismatched = [k for k in set(expected) & set(scorer_tensors) if expected[k].shape != scorer_tensors[k].shape]
        if missing or unexpected or mismatched:
            raise ConversionError(f"--scorer_from {scorer_from}: scorer weights do not match its config (missing "
                                  f"{missing[:5]}, unexpected {unexpected[:5]}, mis-shaped {mismatched[:5]}).")
        converted.update({k: v.to(expected[k].dtype) for k, v in scorer_tensors.items()})
    model.load_state_dict(converted, strict=True)

    processor = video_processor(config)
    report = {
        "checkpoint": str(checkpoint),
        "architecture": KNOWN_WIDTHS.get(config.hidden_size, f"width {config.hidden_size}"),
        **config_report(config),
        "scorer": "uniform" if uniform_scorer else f"from {scorer_from}",
        "num_keys": len(converted),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, report


def video_config(kwargs: dict, labels_file, wrapper) -> DartConfig:
    """The model's `DartConfig` from the converter's fields (`num_labels` among them) and the class names."""
    kwargs = dict(kwargs)
    id2label = read_labels(labels_file, wrapper, kwargs.pop("num_labels"))
    try:
        return DartConfig(**kwargs, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    except ValueError as error:
        raise ConversionError(str(error)) from error


def video_processor(config: DartConfig) -> DartVideoProcessor:
    """The video processor of a converted model: the shortest edge to `image_size`, then a centre crop to it."""
    crop = config.image_size
    return DartVideoProcessor(num_frames=config.num_frames, size={"shortest_edge": crop},
                              crop_size={"height": crop, "width": crop})


def config_report(config: DartConfig) -> dict:
    """The report fields that every converted video model has."""
    return {"hidden_size": config.hidden_size, "depth": config.num_hidden_layers, "num_frames": config.num_frames,
            "num_labels": config.num_labels, "image_size": config.image_size, "num_tokens": config.num_tokens}


def convert_motion(state_dict, wrapper, checkpoint, labels_file, num_tokens, image_size):
    """`(model, processor, report)` for a dvideomamba checkpoint: `video_tokenizer="motion"` with the original's
    settings, every key mapped (the trunk entries beyond the cut checked and left out, listed in the report)."""
    state_dict, left_out = split_motion_trunk(state_dict)
    arch = infer_architecture(state_dict)
    base = arch["score_grid_size"] * arch["patch_size"]
    kwargs = dict(MOTION_PARITY_OPTIONS)
    kwargs.update(arch, backbone="videomamba", image_size=base if image_size is None else image_size,
                  residual_in_fp32=True, layer_norm_epsilon=1e-5, tubelet_size=1)
    grid = kwargs["image_size"] // kwargs["patch_size"]
    kwargs["num_tokens"] = arch["num_frames"] * grid * grid if num_tokens is None else num_tokens
    config = video_config(kwargs, labels_file, wrapper)
    model = DartVideoMambaForVideoClassification(config).eval()
    converted = convert_motion_state_dict(state_dict, model)
    model.load_state_dict(converted, strict=True)
    processor = video_processor(config)
    report = {
        "checkpoint": str(checkpoint),
        "architecture": "d" + KNOWN_WIDTHS.get(config.hidden_size, f"videomamba width {config.hidden_size}"),
        **config_report(config),
        "scorer": "motion (from the checkpoint)",
        "num_keys": len(converted),
        "left_out_keys": left_out,
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original VideoMamba .pth file")
    parser.add_argument("--output_dir", required=True)
    # one of the two for a VideoMamba checkpoint; neither for a dvideomamba one (its motion scorer is in the file)
    scorer = parser.add_mutually_exclusive_group()
    scorer.add_argument("--scorer_from", metavar="DIR", help="converted DART folder to take the scorer from")
    scorer.add_argument("--uniform_scorer", action="store_true",
                        help="constant scores: plain VideoMamba at image_size 224 and 196 tokens per frame")
    parser.add_argument("--labels_file", help="one label per line, or JSON ({id: label} or a list)")
    parser.add_argument("--model_key", default="model|module",
                        help="'|'-separated entries holding the state dict (default: model|module, as the original)")
    parser.add_argument("--num_tokens", type=positive_int,
                        help="default tokens per frame (default: the base grid, 196); for a dvideomamba checkpoint "
                        "the budget of the whole clip (default: frames * 196)")
    parser.add_argument("--image_size", type=positive_int,
                        help="input resolution of the processor (default: the base grid, 224; 448 = high_res)")
    parser.add_argument("--video_score_pooling", choices=["frame", "clip"], default="frame",
                        help="score each frame (default) or the clip's mean frame once")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true", help="reload the folder and compare tensors and logits")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = {"--checkpoint": args.checkpoint, "--scorer_from": args.scorer_from, "--labels_file": args.labels_file}
    try:
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite, inputs=inputs)
        model, processor, report = convert(
            args.checkpoint, scorer_from=args.scorer_from, uniform_scorer=args.uniform_scorer,
            labels_file=args.labels_file, model_key=args.model_key, num_tokens=args.num_tokens,
            image_size=args.image_size, video_score_pooling=args.video_score_pooling,
        )
        scorer_text = ("a uniform scorer (the standard patch grid: plain VideoMamba at 224x224 with 196 tokens per "
                       "frame)" if args.uniform_scorer else f"the DART scorer of `{args.scorer_from}`")
        if model.config.video_tokenizer == "motion":
            scorer_text = (f"the checkpoint's motion tokeniser ({model.config.num_tokens} tokens per clip, the "
                           "original's settings)")
        card = dict(
            title=f"DART {report['architecture']} (VideoMamba, {model.config.num_frames} frames)",
            source=f"Converted from an original [VideoMamba]({ORIGINAL_REPO}) checkpoint "
            f"(`{Path(args.checkpoint).name}`) with `conversion/convert_videomamba_original.py`, with {scorer_text}.",
            task="video-classification",
            extra_facts={"frames": model.config.num_frames, "depth": report["depth"],
                         "parameters": f"{report['num_parameters']:,}"},
        )
        write_verify_and_push(output_dir, model, processor, report, card, args)
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
