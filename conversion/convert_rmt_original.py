#!/usr/bin/env python
"""Convert original RMT (VisRetNet) classification checkpoints into `RmtForImageClassification` folders.

    python conversion/convert_rmt_original.py --checkpoint RMT-L6.pth --output_dir rmt-l6 [--weights model_ema]
        [--preset l6] [--rmt_only] [--verify] [--overwrite]

The checkpoint is read with `torch.load(..., weights_only=True)`. The architecture is read from the checkpoint: the
stages and depths from the `layers.{i}.blocks.{j}` keys, the widths, feed-forward ratios, projection width, number of
labels and input channels from the shapes, the heads (and the decay settings `init_values` / `heads_ranges`) from the
`layers.{i}.Relpos.decay` buffers, and the layer scales from the `gamma_1` / `gamma_2` keys. What a checkpoint does not
hold -- which stages use decomposed retention, the stochastic-depth rate -- comes from the released variant of the same
shape (`--preset` to name one), or else is decomposed retention in every stage but the last, as in RMT-S/M2/L6 and
DARMT-L6.

The stored `Relpos.angle` / `Relpos.decay` buffers are compared with what the config computes and then left out (the
model computes them); a mismatch, or a stage without them, is an error. Every other key maps to exactly one tensor of the model, and every tensor
of the model is filled: an unknown, missing or mis-shaped key is an error. A DARMT checkpoint (DART's image reshaper in
front of RMT, keys `pre_image.*`) is refused unless `--rmt_only` asks for its RMT part alone (which expects the
reshaper's warped 224x224 images as input); `convert_dart_original.py` is the converter for the whole model.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart.configuration_rmt import RMT_PRESETS, RmtConfig  # noqa: E402
from modeling_dart.conversion_utils import (  # noqa: E402
    ConversionError,
    StagedOutput,
    UsageError,
    account_keys,
    check_output_dir,
    load_original_checkpoint,
    report_usage_error,
    require_finite,
)
from modeling_dart.modeling_rmt import RmtForImageClassification, rmt_relative_position_buffers  # noqa: E402

LABELS_FILE = REPO_ROOT / "modeling_dart" / "data" / "imagenet1k_id2label.json"
DARMT_PREFIX = "pre_image."

_STEM = {"0": "conv1", "1": "norm1", "3": "conv2", "4": "norm2", "6": "conv3", "7": "norm3", "9": "conv4", "10": "norm4"}
_BLOCK_PARTS = {
    "pos.conv": "position_conv",
    "retention_layer_norm": "retention_layer_norm",
    "retention.q_proj": "retention.q_proj",
    "retention.k_proj": "retention.k_proj",
    "retention.v_proj": "retention.v_proj",
    "retention.lepe.conv": "retention.lepe",
    "retention.out_proj": "retention.out_proj",
    "final_layer_norm": "final_layer_norm",
    "ffn.fc1": "ffn.fc1",
    "ffn.dwconv.conv": "ffn.dwconv",
    "ffn.fc2": "ffn.fc2",
}
_BATCH_NORM_TENSORS = "weight|bias|running_mean|running_var|num_batches_tracked"
_RELPOS = re.compile(r"^layers\.(\d+)\.Relpos\.(angle|decay)$")
_BLOCK = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias)$")
_GAMMA = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.gamma_([12])$")


def convert_rmt_key(key: str) -> str | None:
    """The `RmtForImageClassification` name of an original VisRetNet key; `None` for the `layers.{i}.Relpos.angle` /
    `.decay` buffers, which the model computes (check them with [`check_relative_position_buffers`]). Raises a
    `ConversionError` for a key that is not part of VisRetNet."""
    if match := re.fullmatch(rf"patch_embed\.proj\.(\d+)\.({_BATCH_NORM_TENSORS})", key):
        if match.group(1) in _STEM:
            return f"rmt.embeddings.{_STEM[match.group(1)]}.{match.group(2)}"
    elif _RELPOS.fullmatch(key):
        return None
    elif match := _GAMMA.fullmatch(key):
        stage, block, which = match.groups()
        name = "retention_layer_scale" if which == "1" else "ffn_layer_scale"
        return f"rmt.encoder.stages.{stage}.layers.{block}.{name}"
    elif match := _BLOCK.fullmatch(key):
        stage, block, part, tensor = match.groups()
        if part in _BLOCK_PARTS:
            return f"rmt.encoder.stages.{stage}.layers.{block}.{_BLOCK_PARTS[part]}.{tensor}"
    elif match := re.fullmatch(rf"layers\.(\d+)\.downsample\.(reduction|norm)\.({_BATCH_NORM_TENSORS})", key):
        # the original merges at the end of stage i; here the merging opens stage i + 1
        stage, part, tensor = match.groups()
        return f"rmt.encoder.stages.{int(stage) + 1}.downsample.{part}.{tensor}"
    elif match := re.fullmatch(r"proj\.(weight|bias)", key):
        return f"feature_projection.dense.{match.group(1)}"
    elif match := re.fullmatch(rf"norm\.({_BATCH_NORM_TENSORS})", key):
        return f"feature_projection.norm.{match.group(1)}"
    elif match := re.fullmatch(r"head\.(weight|bias)", key):
        return f"classifier.{match.group(1)}"
    hint = " (a DARMT reshaper key: see --rmt_only)" if key.startswith(DARMT_PREFIX) else ""
    raise ConversionError(f"unknown key {key!r}: not part of an RMT (VisRetNet) checkpoint{hint}.")


def _adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
    # the layer scales are stored as (1, 1, 1, C) and kept as (C,)
    return tensor.reshape(-1) if _GAMMA.fullmatch(key) else tensor


def _require(state_dict: dict[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"missing key {key!r}: not an RMT (VisRetNet) checkpoint, or an incomplete one.")
    tensor = state_dict[key]
    if tensor.dim() != ndim:
        raise ConversionError(f"mis-shaped key {key!r}: expected {ndim} dimensions, got {tuple(tensor.shape)}.")
    return tensor


def _contiguous(indices: set[int], what: str) -> int:
    count = max(indices) + 1 if indices else 0
    if indices != set(range(count)):
        raise ConversionError(f"{what} indices are not contiguous from 0: {sorted(indices)}.")
    return count


def _decay_settings(decay: torch.Tensor, key: str) -> tuple[float, float | None]:
    """`(init_value, heads_range)` with `decay[h] = log(1 - 2**-(init_value + heads_range * h / n))`; the range is
    `None` for a single head (it then changes nothing)."""
    if decay.numel() == 0:
        raise ConversionError(f"{key} is empty: it must hold one log decay per head.")
    if decay.dtype not in (torch.float32, torch.float64):
        # rounded to a half type, the decays no longer give the integer settings they were computed from
        raise ConversionError(f"{key} is stored as {decay.dtype}: the converter reads the heads' decay settings from "
                              f"it and needs float32 (as the original release stores it); convert the float32 "
                              f"checkpoint.")
    if not torch.isfinite(decay).all() or (decay >= 0).any():
        raise ConversionError(f"{key} must hold finite negative log decays, got {decay.tolist()}.")
    exponents = -torch.log2(-torch.expm1(decay.double()))
    init_value = _tidy(float(exponents[0]))
    if decay.numel() == 1:
        return init_value, None
    heads_range = _tidy(float(exponents[1] - exponents[0]) * decay.numel())
    if not heads_range > 0:
        raise ConversionError(
            f"{key} must rise from head to head (RMT's decay of head h is log(1 - 2**-(init_value + heads_range * h / "
            f"num_heads)) with heads_range > 0), got {decay.tolist()}: heads_range {heads_range}."
        )
    return init_value, heads_range


def _tidy(value: float) -> float:
    """`value` rounded to 3 decimals, as an int when whole (the released settings are small integers)."""
    value = round(value, 3)
    return int(value) if value == int(value) else value


def _ffn_ratio(ffn: int, dim: int) -> float:
    """A ratio `r` with `int(r * dim) == ffn` (how the original sizes the feed-forward network), tidy when possible."""
    for ratio in (_tidy(ffn / dim), ffn / dim, (ffn + 0.5) / dim):
        if int(ratio * dim) == ffn:
            return ratio
    raise ConversionError(f"no feed-forward ratio gives {ffn} channels for width {dim}.")


def _matching_preset(fields: dict) -> str | None:
    shape = ("embed_dims", "depths", "num_heads", "mlp_ratios", "layerscales")
    for name, preset in RMT_PRESETS.items():
        if all(list(preset[field]) == list(fields[field]) for field in shape):
            return name
    return None


def infer_rmt_config(state_dict: dict[str, torch.Tensor], preset: str | None = None, **overrides) -> RmtConfig:
    """The `RmtConfig` of an original VisRetNet state dict (see the module docstring for what comes from where).

    `preset` (`"t3"`, `"s"`, `"m2"`, `"l6"`) supplies what the checkpoint does not hold (decomposed-retention stages,
    drop-path rate); by default the released variant with the same widths, depths, heads, ratios and layer scales, if
    any. `overrides` replace single fields. Raises a `ConversionError` when the state dict is not VisRetNet's.
    """
    stages = _contiguous({int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))}, "stage")
    if stages == 0:
        raise ConversionError("no `layers.{i}.*` keys: not an RMT (VisRetNet) checkpoint.")
    fields: dict[str, list] = {name: [] for name in ("embed_dims", "depths", "num_heads", "init_values",
                                                      "heads_ranges", "mlp_ratios", "layerscales")}
    for stage in range(stages):
        prefix = f"layers.{stage}.blocks."
        depth = _contiguous({int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))},
                            f"stage {stage} block")
        if depth == 0:
            raise ConversionError(f"stage {stage} has no `{prefix}*` keys: not an RMT (VisRetNet) checkpoint.")
        dim = _require(state_dict, f"{prefix}0.retention_layer_norm.weight", 1).shape[0]
        ffn = _require(state_dict, f"{prefix}0.ffn.fc1.weight", 2).shape[0]
        decay_key = f"layers.{stage}.Relpos.decay"
        decay = _require(state_dict, decay_key, 1)
        init_value, heads_range = _decay_settings(decay, decay_key)
        if dim % (2 * decay.numel()):
            raise ConversionError(
                f"{decay_key} holds {decay.numel()} decays (one per head), but {decay.numel()} heads do not divide "
                f"the stage's width {dim} into even key dimensions: the buffer does not belong to this stage."
            )
        fields["embed_dims"].append(dim)
        fields["depths"].append(depth)
        fields["num_heads"].append(decay.numel())
        fields["init_values"].append(init_value)
        fields["heads_ranges"].append(heads_range)
        fields["mlp_ratios"].append(_ffn_ratio(ffn, dim))
        scales = [f"{prefix}{block}.gamma_{which}" in state_dict for block in range(depth) for which in (1, 2)]
        if any(scales) and not all(scales):
            raise ConversionError(f"stage {stage}: some blocks have layer scales (`gamma_1` / `gamma_2`) and others "
                                  "not; RMT uses them in every block of a stage or in none.")
        fields["layerscales"].append(all(scales))
    if preset is None:
        preset = _matching_preset(fields)
    elif preset not in RMT_PRESETS:
        raise ConversionError(f"unknown preset {preset!r}; choose one of {sorted(RMT_PRESETS)}.")
    extra = dict(RMT_PRESETS[preset]) if preset else {}
    # a single head has no range (any value computes the same decay): take the preset's, else another stage's
    known = [value for value in fields["heads_ranges"] if value is not None]
    fields["heads_ranges"] = [
        value if value is not None else (extra["heads_ranges"][i] if extra else (known[0] if known else 1))
        for i, value in enumerate(fields["heads_ranges"])
    ]
    kwargs = {
        "chunkwise_recurrents": extra.get("chunkwise_recurrents", [True] * (stages - 1) + [False]),
        "drop_path_rate": extra.get("drop_path_rate", 0.1),
        "layer_init_values": extra.get("layer_init_values", 1e-6),
        **fields,
        "num_channels": _require(state_dict, "patch_embed.proj.0.weight", 4).shape[1],
        "projection": _require(state_dict, "proj.weight", 2).shape[0],
    }
    num_labels = _require(state_dict, "head.weight", 2).shape[0]
    if num_labels == 1000 and LABELS_FILE.is_file():
        id2label = {int(k): v for k, v in json.loads(LABELS_FILE.read_text()).items()}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    kwargs.update(overrides)
    try:
        return RmtConfig(**kwargs)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"the checkpoint's shapes give no valid RmtConfig: {error}") from error


def check_relative_position_buffers(state_dict: dict[str, torch.Tensor], config: RmtConfig, *,
                                    rtol: float = 1e-5, atol: float = 1e-7) -> list[str]:
    """Compare the checkpoint's `layers.{i}.Relpos.angle` / `.decay` buffers with what `config` computes (float32; the
    original computes them in float32 too, so they agree to rounding); return the keys checked. Raises a
    `ConversionError` naming the key, the largest difference and the config values on any mismatch in shape or value,
    for a buffer of a stage the config does not have, and for a buffer of one of its stages that the checkpoint
    lacks (the original stores both buffers of every stage: without them the checkpoint is incomplete, or not
    VisRetNet's)."""
    expected = rmt_relative_position_buffers(config)
    for stage in sorted(expected):
        for name in ("angle", "decay"):
            if f"layers.{stage}.Relpos.{name}" not in state_dict:
                raise ConversionError(
                    f"missing key 'layers.{stage}.Relpos.{name}': an original RMT checkpoint stores the angle and "
                    f"decay buffers of every stage, and the converter checks them against the config; this one is "
                    f"incomplete."
                )
    checked = []
    for key, stored in state_dict.items():
        match = _RELPOS.fullmatch(key)
        if match is None:
            continue
        stage, name = int(match.group(1)), match.group(2)
        if stage not in expected:
            raise ConversionError(f"{key}: the config has {config.num_stages} stages, so no stage {stage}.")
        computed = expected[stage][name]
        settings = (f"embed_dims[{stage}]={config.embed_dims[stage]}, num_heads[{stage}]={config.num_heads[stage]}, "
                    f"init_values[{stage}]={config.init_values[stage]}, "
                    f"heads_ranges[{stage}]={config.heads_ranges[stage]}, rope_theta={config.rope_theta}")
        if tuple(stored.shape) != tuple(computed.shape):
            raise ConversionError(f"{key} has shape {tuple(stored.shape)}, but the config ({settings}) computes "
                                  f"{tuple(computed.shape)}.")
        stored = stored.to(torch.float32)
        if not torch.allclose(stored, computed, rtol=rtol, atol=atol):
            difference = float((stored - computed).abs().max())
            raise ConversionError(f"{key} differs from what the config ({settings}) computes: largest difference "
                                  f"{difference:.3g} (stored {stored.tolist()[:6]}, computed {computed.tolist()[:6]}).")
        checked.append(key)
    return checked


_PLAIN_BACKBONES = (  # (what the file is, a key pattern of its original release that RMT never has)
    ("a ViT/DeiT checkpoint (`blocks.{i}.*` keys)", re.compile(r"^blocks\.\d+\.")),
    ("a Vision Mamba checkpoint (`layers.{i}.mixer.*` keys)", re.compile(r"^layers\.\d+\.mixer\.")),
)
WRAP_ADVICE = ("wrap it in DART with conversion/convert_vit_to_dart.py (a Vim `.pth` directly, a ViT/DeiT through "
               "its Transformers folder or Hub id)")


def plain_backbone_kind(state_dict: dict[str, torch.Tensor]) -> str | None:
    """What an original ViT/DeiT or Vision Mamba state dict is (e.g. "a Vision Mamba checkpoint (...)"), or None."""
    for kind, pattern in _PLAIN_BACKBONES:
        if any(pattern.match(key) for key in state_dict):
            return kind
    return None


def rmt_state_dict(state_dict: dict[str, torch.Tensor], rmt_only: bool = False) -> dict[str, torch.Tensor]:
    """The RMT keys of an original checkpoint. A DARMT checkpoint (`pre_image.*` keys) is refused unless `rmt_only`,
    which drops the reshaper's keys; a token DART, ViT/DeiT or Vision Mamba checkpoint is refused, naming the
    converter that takes it."""
    if any(key.startswith("patch_embed.spn.") for key in state_dict):
        raise ConversionError("this is a token DART checkpoint (`patch_embed.spn.*` keys: darvit_* / darvim_*), not "
                              "an RMT one; convert it with conversion/convert_dart_original.py --variant <its variant>.")
    kind = plain_backbone_kind(state_dict)
    if kind is not None:
        raise ConversionError(f"this is {kind}, not an RMT (VisRetNet) one; {WRAP_ADVICE}.")
    reshaper = [key for key in state_dict if key.startswith(DARMT_PREFIX)]
    if reshaper and not rmt_only:
        raise ConversionError(
            f"this is a DARMT checkpoint (DART's image reshaper in front of RMT: {len(reshaper)} `{DARMT_PREFIX}*` "
            "keys). Convert the whole model with convert_dart_original.py --variant darmt_l6, or pass --rmt_only "
            "(`rmt_only=True`) for its RMT part alone, which expects the reshaper's warped images."
        )
    return {key: tensor for key, tensor in state_dict.items() if not key.startswith(DARMT_PREFIX)}


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: RmtForImageClassification) -> dict:
    """Check the relative-position buffers against `model.config`, then map every other key onto `model` (every key
    mapped, every tensor of the model filled, shapes equal; else a `ConversionError`)."""
    check_relative_position_buffers(state_dict, model.config)
    for key in state_dict:
        convert_rmt_key(key)  # an unknown key fails here, with its name
    weights = {key: tensor for key, tensor in state_dict.items() if not _RELPOS.fullmatch(key)}
    return account_keys(weights, model.state_dict(), convert_rmt_key, "the RMT model built from it", adapt=_adapt)


def convert(checkpoint: str | Path, weights: str = "model", *, preset: str | None = None, rmt_only: bool = False,
            **overrides):
    """Return `(model, report)`: an `RmtForImageClassification` (eval mode) holding an original checkpoint."""
    state_dict = rmt_state_dict(load_original_checkpoint(checkpoint, weights), rmt_only=rmt_only)
    config = infer_rmt_config(state_dict, preset=preset, **overrides)
    model = RmtForImageClassification(config).eval()
    converted = convert_state_dict(state_dict, model)
    model.load_state_dict(converted, strict=True)
    relpos = [key for key in state_dict if _RELPOS.fullmatch(key)]
    report = {
        "weights": weights,
        "preset": preset or _matching_preset(vars(config)),
        "embed_dims": config.embed_dims,
        "depths": config.depths,
        "num_heads": config.num_heads,
        "num_keys": len(converted),
        "relative_position_buffers_checked_and_left_out": len(relpos),
        "relative_position_values_left_out": sum(state_dict[key].numel() for key in relpos),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, report


def verify_folder(folder: Path, model: RmtForImageClassification) -> None:
    """Reload `folder` and check every tensor and the logits of one random batch against `model`."""
    reloaded = RmtForImageClassification.from_pretrained(folder).eval()
    saved = reloaded.state_dict()
    for key, tensor in model.state_dict().items():
        if not torch.equal(saved[key], tensor):
            raise ConversionError(f"saved tensor {key} differs from the converted one.")
    pixels = torch.randn(2, model.config.num_channels, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(pixels).logits, reloaded(pixels).logits
    if not torch.allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, float(expected.abs().max()))):
        raise ConversionError("the reloaded model does not reproduce the converted model's logits (largest "
                              f"difference {float((actual - expected).abs().max()):.3g}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="original .pth file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--weights", choices=["model", "model_ema"], default="model",
                        help="which state dict of a training checkpoint to convert (default: model)")
    parser.add_argument("--preset", choices=sorted(RMT_PRESETS), default=None,
                        help="released variant that supplies what the checkpoint does not hold (default: the one of "
                        "the same shape, if any)")
    parser.add_argument("--rmt_only", action="store_true",
                        help="convert only the RMT part of a DARMT checkpoint (it expects the reshaper's warped images)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true", help="reload the folder and compare every tensor and logits")
    args = parser.parse_args(argv)
    try:
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite,
                                      inputs={"--checkpoint": args.checkpoint})
        model, report = convert(args.checkpoint, args.weights, preset=args.preset, rmt_only=args.rmt_only)
        require_finite(model.state_dict(), "the converted model")
        with StagedOutput(output_dir) as folder:
            model.save_pretrained(folder)
            print(json.dumps(report, indent=1))
            if args.verify:
                verify_folder(folder, model)
                print(f"verified: {report['num_keys']} tensors equal after reload; logits reproduced")
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
