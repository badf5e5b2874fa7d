#!/usr/bin/env python
"""Convert original DART checkpoints (darvit_* / darvim_* / darmt_l6, HCPLab-SYSU/DART) into Hugging Face folders.

    python conversion/convert_dart_original.py --variant darvit_tiny --checkpoint darvit_tiny.pth \
        --output_dir dart-deit-ti [--weights model_ema] [--verify] [--push_to_hub org/dart-deit-ti] [--overwrite]

The token variants (darvit_* / darvim_*) become `DartForImageClassification` folders. `--variant darmt_l6` (the image
reshaper in front of RMT-L6) becomes a `DartReshaperForImageClassification` folder: the `pre_image.*` keys map onto the
reshaper (`reshaper.scorer.*`), every other key onto the RMT classifier (`backbone.*`, as
`conversion/convert_rmt_original.py` maps them); the RMT's architecture is read from the checkpoint (stages and depths
from the block keys, widths and ratios from the shapes, heads from `layers.{i}.Relpos.decay`, layer scales from the
`gamma_*` keys), its stored `Relpos.angle` / `Relpos.decay` buffers are checked against what the config computes and
then left out, and the reshaper takes the original's behaviour (`DAIR_PARITY_OPTIONS`). A darmt checkpoint given as
a token variant, or a token, plain RMT, ViT/DeiT or Vision Mamba checkpoint given as darmt_l6, is an error that names
the right converter.

The checkpoint is read with `torch.load(..., weights_only=True)` (only `argparse.Namespace` is allow-listed, for the
`args` entry of training checkpoints). Every key is accounted for: each original tensor maps to exactly one parameter or
buffer of the converted model, and each of those is filled; any missing, unexpected or mis-shaped key is an error.
The depth is read from the checkpoint, so reduced-depth files convert too; everything else must match the variant.
Weights with NaN or infinite values are refused. The folder is written through a temporary sibling folder that moves
into place only once it is complete (and verified, with `--verify`); an output folder that holds, or lies inside, the
checkpoint is refused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart import DartConfig, DartForImageClassification, DartImageProcessor  # noqa: E402
from modeling_dart.configuration_reshaper_dart import DAIR_PARITY_OPTIONS, DartReshaperConfig  # noqa: E402
from modeling_dart.conversion_utils import (  # noqa: E402,F401  (shared with the other converters; re-exported)
    VIM_KEY_RULES,
    ConversionError,
    StagedOutput,
    UsageError,
    account_keys,
    check_output_dir,
    compile_rules,
    infer_depth,
    load_original_checkpoint,
    rename_key,
    report_usage_error,
    require_finite,
    require_tensor,
    safe_torch_load,
)
from modeling_dart.model_card import PAPER, write_model_card  # noqa: E402
from modeling_dart.modeling_reshaper_dart import DartReshaperForImageClassification  # noqa: E402
from modeling_dart.reshaper_dart import original_reshaper_key  # noqa: E402

from conversion.convert_rmt_original import (  # noqa: E402
    WRAP_ADVICE,
    check_relative_position_buffers,
    convert_rmt_key,
    infer_rmt_config,
    plain_backbone_kind,
)

ASSETS = Path(__file__).resolve().parent / "assets"
LABELS_FILE = REPO_ROOT / "modeling_dart" / "data" / "imagenet1k_id2label.json"
ORIGINAL_REPO = "https://github.com/HCPLab-SYSU/DART"


@dataclass(frozen=True)
class Variant:
    name: str
    hub_name: str
    backbone: str
    hidden_size: int
    num_heads: int
    trunk: str
    head: str
    num_tokens: int
    depth: int
    paper_top1: float | None = None

    def config_kwargs(self) -> dict:
        kwargs = dict(
            backbone=self.backbone,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.depth,
            scorer_trunk=self.trunk,
            scorer_head=self.head,
            num_tokens=self.num_tokens,
            image_size=448,
            patch_size=16,
            score_grid_size=14,
        )
        if self.backbone == "vit":
            kwargs.update(num_attention_heads=self.num_heads, intermediate_size=4 * self.hidden_size,
                          layer_norm_eps=1e-6, qkv_bias=True)
        return kwargs


# The released variants (DESIGN.md §1-2, fixtures manifests). Heads: darvit_tiny* Small/v1 (v2 for _v2),
# darvit_sm* Large/v1, darvim_tiny* Small/v2, darvim_sm* Large/v2.
VARIANTS = {
    v.name: v
    for v in [
        Variant("darvit_tiny", "dart-deit-ti", "vit", 192, 3, "mobilenet_v3_small", "v1", 196, 12),
        Variant("darvit_tiny_v2", "dart-deit-ti-v2", "vit", 192, 3, "mobilenet_v3_small", "v2", 196, 12),
        Variant("darvit_tiny_121p", "dart-deit-ti-121", "vit", 192, 3, "mobilenet_v3_small", "v1", 121, 12),
        Variant("darvit_sm", "dart-deit-s", "vit", 384, 6, "mobilenet_v3_large", "v1", 196, 12),
        Variant("darvit_sm_144p", "dart-deit-s-144", "vit", 384, 6, "mobilenet_v3_large", "v1", 144, 12),
        Variant("darvit_sm_288p", "dart-deit-s-288", "vit", 384, 6, "mobilenet_v3_large", "v1", 288, 12),
        Variant("darvit_sm_392p", "dart-deit-s-392", "vit", 384, 6, "mobilenet_v3_large", "v1", 392, 12),
        Variant("darvim_tiny", "dart-vim-ti", "vim", 192, 0, "mobilenet_v3_small", "v2", 196, 24),
        Variant("darvim_tiny_2seq", "dart-vim-ti-392", "vim", 192, 0, "mobilenet_v3_small", "v2", 392, 24),
        Variant("darvim_sm", "dart-vim-s", "vim", 384, 0, "mobilenet_v3_large", "v2", 196, 24),
        Variant("darvim_sm_2seq", "dart-vim-s-392", "vim", 384, 0, "mobilenet_v3_large", "v2", 392, 24),
    ]
}

# (pattern on the original key, replacement in the HF model); applied in order, first match wins
_SCORER = r"patch_embed\.spn\.spn\.spn\."
KEY_RULES: list[tuple[str, str]] = [
    (_SCORER + r"features\.(.+)$", r"dart.embeddings.scorer.features.\1"),
    (_SCORER + r"mlp\.net\.0\.(weight|bias)$", r"dart.embeddings.scorer.head.fc1.\1"),
    (_SCORER + r"mlp\.net\.2\.(weight|bias)$", r"dart.embeddings.scorer.head.fc2.\1"),
    # DeiT blocks
    (r"blocks\.(\d+)\.norm1\.(weight|bias)$", r"dart.encoder.layer.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)$", r"dart.encoder.layer.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", r"dart.encoder.layer.\1.attention.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"dart.encoder.layer.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)$", r"dart.encoder.layernorm.\1"),
    # patch projection, cls token, position table, Vim blocks, head (the Vim release's keys, shared with DeiT)
    *VIM_KEY_RULES,
]


_COMPILED_RULES = compile_rules(KEY_RULES)

# The image-reshaper form: RMT-L6 behind DART's image reshaper (the original's `DARMT_L6`).
DARMT_VARIANT = "darmt_l6"
DARMT_HUB_NAME = "dart-rmt-l6"
DARMT_PREFIX = "pre_image."
_TOKEN_SCORER_PREFIX = "patch_embed.spn."
_GAMMA = re.compile(r"^layers\.\d+\.blocks\.\d+\.gamma_[12]$")
_RELPOS = re.compile(r"^layers\.\d+\.Relpos\.(angle|decay)$")


def convert_key(key: str) -> str | None:
    """The HF name of an original key, or None when no rule matches."""
    return rename_key(key, _COMPILED_RULES)


def build_config(variant: Variant, state_dict: dict[str, torch.Tensor]) -> DartConfig:
    depth = infer_depth(state_dict, variant.backbone)
    head = state_dict.get("head.weight")
    if head is None:
        raise ConversionError("missing key 'head.weight' (the classifier).")
    num_labels = head.shape[0]
    if num_labels == 1000 and LABELS_FILE.is_file():
        id2label = {int(k): v for k, v in json.loads(LABELS_FILE.read_text()).items()}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    kwargs = variant.config_kwargs()
    kwargs["num_hidden_layers"] = depth
    return DartConfig(**kwargs, id2label=id2label, label2id={v: k for k, v in id2label.items()})


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map every original key onto `model`; raise on unmatched, missing or mis-shaped keys."""
    return account_keys(state_dict, model.state_dict(), convert_key, "the variant")


def convert(variant_name: str, checkpoint: str | Path, weights: str = "model"):
    """Return `(model, processor, report)` for an original checkpoint."""
    if variant_name == DARMT_VARIANT:
        return convert_darmt(checkpoint, weights)
    if variant_name not in VARIANTS:
        raise ConversionError(f"unknown variant {variant_name!r}; choose one of {sorted(VARIANTS) + [DARMT_VARIANT]}")
    variant = VARIANTS[variant_name]
    state_dict = load_original_checkpoint(checkpoint, weights)
    reshaper_keys = [key for key in state_dict if key.startswith(DARMT_PREFIX)]
    if reshaper_keys:
        raise ConversionError(
            f"this is a darmt checkpoint (DART's image reshaper in front of RMT: {len(reshaper_keys)} "
            f"`{DARMT_PREFIX}*` keys), not the token variant {variant_name}; convert it with --variant {DARMT_VARIANT}."
        )
    config = build_config(variant, state_dict)
    model = DartForImageClassification(config).eval()
    converted = convert_state_dict(state_dict, model)
    model.load_state_dict(converted, strict=True)
    processor = DartImageProcessor()
    report = {
        "variant": variant.name,
        "hub_name": variant.hub_name,
        "weights": weights,
        "depth": config.num_hidden_layers,
        "full_depth": config.num_hidden_layers == variant.depth,
        "num_keys": len(converted),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, report


# ------------------------------------------------------------------------------------------- darmt_l6 (reshaper)
def split_darmt_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """`(reshaper, rmt)`: the `pre_image.*` keys and the others of a darmt state dict. A state dict without reshaper
    keys is refused, naming what it is instead (a token DART or a plain RMT checkpoint)."""
    reshaper = {key: tensor for key, tensor in state_dict.items() if key.startswith(DARMT_PREFIX)}
    rmt = {key: tensor for key, tensor in state_dict.items() if not key.startswith(DARMT_PREFIX)}
    if not reshaper:
        if any(key.startswith(_TOKEN_SCORER_PREFIX) for key in state_dict):
            raise ConversionError(
                f"this is a token DART checkpoint (`{_TOKEN_SCORER_PREFIX}*` keys: darvit_* / darvim_*), not "
                f"{DARMT_VARIANT}; choose its --variant among {sorted(VARIANTS)}."
            )
        if any(_RELPOS.fullmatch(key) for key in state_dict):
            raise ConversionError(
                f"this is a plain RMT checkpoint (no `{DARMT_PREFIX}*` reshaper keys), not {DARMT_VARIANT}; convert "
                "it with conversion/convert_rmt_original.py."
            )
        kind = plain_backbone_kind(state_dict)
        if kind is not None:
            raise ConversionError(f"this is {kind}, not {DARMT_VARIANT} (DART's image reshaper in front of RMT); "
                                  f"{WRAP_ADVICE}.")
        raise ConversionError(f"no `{DARMT_PREFIX}*` keys: not a {DARMT_VARIANT} checkpoint (DART's image reshaper "
                              "in front of RMT).")
    return reshaper, rmt


def convert_darmt_key(key: str) -> str | None:
    """The `DartReshaperForImageClassification` name of an original darmt key: `pre_image.spn.spn.spn.*` ->
    `reshaper.scorer.*`, the RMT's keys -> `backbone.*` (as `convert_rmt_original.convert_rmt_key` names them);
    `None` for the `layers.{i}.Relpos.angle` / `.decay` buffers, which the model computes. Raises a `ConversionError`
    naming any other key."""
    if key.startswith(DARMT_PREFIX):
        try:
            return "reshaper." + original_reshaper_key(key[len(DARMT_PREFIX):])
        except KeyError:
            raise ConversionError(f"unknown key {key!r}: not a key of the original image reshaper "
                                  f"({DARMT_PREFIX}spn.spn.spn.features.* or .mlp.net.{{0,2}}.*).") from None
    converted = convert_rmt_key(key)
    return None if converted is None else "backbone." + converted


def build_darmt_config(state_dict: dict[str, torch.Tensor], **rmt_overrides) -> DartReshaperConfig:
    """The `DartReshaperConfig` of an original darmt state dict: the RMT read from the checkpoint
    (`convert_rmt_original.infer_rmt_config`: stages, depths, widths, ratios, heads from `layers.{i}.Relpos.decay`,
    layer scales from the `gamma_*` keys, labels from `head.weight`; `rmt_overrides` replace single fields), the
    reshaper's head width from `pre_image.spn.spn.spn.mlp.net.0.weight`, and the original's reshaper: an
    EfficientNet-B0 trunk with head v1, 448 -> 224 on a 14x14 score grid, `DAIR_PARITY_OPTIONS`."""
    reshaper, rmt = split_darmt_state_dict(state_dict)
    what = f"a {DARMT_VARIANT} checkpoint, or an incomplete one"
    head_in = require_tensor(reshaper, f"{DARMT_PREFIX}spn.spn.spn.mlp.net.0.weight", 2, what)
    head_out = require_tensor(reshaper, f"{DARMT_PREFIX}spn.spn.spn.mlp.net.2.weight", 2, what)
    if head_out.shape[0] != 1:
        raise ConversionError(f"{DARMT_PREFIX}spn.spn.spn.mlp.net.2.weight has shape {tuple(head_out.shape)}: the "
                              "original reshaper's head v1 gives one score per position, (1, hidden).")
    backbone_config = infer_rmt_config(rmt, **rmt_overrides)
    try:
        return DartReshaperConfig(
            backbone_config=backbone_config, image_size=448, patch_size=16, downscale_factor=2, score_grid_size=14,
            scorer="learned", scorer_trunk="efficientnet_b0", scorer_head="v1", scorer_hidden_size=head_in.shape[0],
            num_channels=backbone_config.num_channels, **DAIR_PARITY_OPTIONS,
        )
    except (ValueError, TypeError) as error:
        raise ConversionError(f"the checkpoint's shapes give no valid DartReshaperConfig: {error}") from error


def _adapt_darmt(key: str, tensor: torch.Tensor) -> torch.Tensor:
    # the layer scales are stored as (1, 1, 1, C) and kept as (C,)
    return tensor.reshape(-1) if _GAMMA.fullmatch(key) else tensor


def convert_darmt_state_dict(state_dict: dict[str, torch.Tensor],
                             model: DartReshaperForImageClassification) -> dict[str, torch.Tensor]:
    """Check the stored relative-position buffers against `model.config.backbone_config` (then leave them out), and
    map every other key onto `model`: every key mapped, every tensor of the model filled, shapes equal; else a
    `ConversionError` naming the keys."""
    _, rmt = split_darmt_state_dict(state_dict)
    check_relative_position_buffers(rmt, model.config.backbone_config)
    for key in state_dict:
        convert_darmt_key(key)  # an unknown key fails here, with its name
    weights = {key: tensor for key, tensor in state_dict.items() if not _RELPOS.fullmatch(key)}
    return account_keys(weights, model.state_dict(), convert_darmt_key, f"the {DARMT_VARIANT} model built from it",
                        adapt=_adapt_darmt)


def convert_darmt(checkpoint: str | Path, weights: str = "model"):
    """Return `(model, processor, report)`: a `DartReshaperForImageClassification` (eval mode) holding an original
    darmt checkpoint, and the image processor of its evaluation (the DeiT recipe at 448)."""
    state_dict = load_original_checkpoint(checkpoint, weights)
    config = build_darmt_config(state_dict)
    model = DartReshaperForImageClassification(config).eval()
    converted = convert_darmt_state_dict(state_dict, model)
    model.load_state_dict(converted, strict=True)
    rmt = config.backbone_config
    relpos = [key for key in state_dict if _RELPOS.fullmatch(key)]
    l6 = DartReshaperConfig.darmt_l6().backbone_config
    full_size = all(getattr(rmt, f) == getattr(l6, f) for f in ("embed_dims", "depths", "num_heads", "mlp_ratios",
                                                                 "layerscales"))
    report = {
        "variant": DARMT_VARIANT,
        "hub_name": DARMT_HUB_NAME,
        "weights": weights,
        "embed_dims": rmt.embed_dims,
        "depths": rmt.depths,
        "num_heads": rmt.num_heads,
        "full_size": full_size,
        "num_keys": len(converted),
        "relative_position_buffers_checked_and_left_out": len(relpos),
        "relative_position_values_left_out": sum(state_dict[key].numel() for key in relpos),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, DartImageProcessor(), report


def write_darmt_model_card(output_dir: Path, config: DartReshaperConfig, title: str, source: str,
                           extra_facts: dict | None = None) -> Path:
    """README.md (YAML metadata, what it is, how to use it) for a converted darmt folder."""
    rmt = config.backbone_config
    facts = {
        "form": "image reshaper (DAIR) + RMT classifier",
        "reshaper": f"{config.scorer_trunk} + head {config.scorer_head}, {config.score_grid_size}x"
                    f"{config.score_grid_size} score grid, {config.image_size} -> {config.image_size // config.downscale_factor}",
        "reshaper behaviour": "the original's (batch-level scores, first edge at one warped pixel, edge scale from "
                              "the batch's first image, strip sampling)",
        "RMT widths / depths / heads": f"{rmt.embed_dims} / {rmt.depths} / {rmt.num_heads}",
        "input resolution": f"{config.image_size}x{config.image_size}",
        "labels": len(config.id2label),
        **(extra_facts or {}),
    }
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()])
    text = f"""---
library_name: transformers
pipeline_tag: image-classification
license: other
tags:
- dart
- vision
- image-classification
- dart-reshaper
- rmt
---

# {title}

DART ([paper]({PAPER})) in its second form: an image reshaper warps the {config.image_size}x{config.image_size} input
into a {config.image_size // config.downscale_factor}x{config.image_size // config.downscale_factor} image whose rows
and columns give more pixels to the parts a scoring network finds important, and RMT (Retentive Networks Meet Vision
Transformers) classifies the warped image.

{source}

{table}

## How to use

With the `modeling_dart` package installed (`pip install modeling_dart`):

```python
import modeling_dart  # registers DART with the Auto classes
from transformers import pipeline

classifier = pipeline("image-classification", model="path/to/this/folder")
```

Without it, the folder carries its own modeling code:

```python
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("path/to/this/folder", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("path/to/this/folder", trust_remote_code=True)
```

The output carries the warp (`warped_pixel_values`, `row_edges`, `col_edges`, `score_map`).

## Limitations

The reshaper reproduces the original's behaviour: an image's warp depends on the other images of its batch (its
scores are standardised over the batch). Set `model.config.score_normalization = "image"`, or pass
`score_normalization="image"`, for batch-independent predictions (not how the weights were trained).
"""
    path = Path(output_dir) / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def top5(model, processor, image_path: Path) -> list[tuple[str, float]]:
    from PIL import Image

    inputs = processor(Image.open(image_path), return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits.softmax(-1)[0]
    values, indices = probs.topk(5)
    return [(model.config.id2label[int(i)], float(v)) for v, i in zip(values, indices)]


def verify_folder(output_dir: Path, model, state_dict_converted: dict[str, torch.Tensor]) -> None:
    """Reload the saved folder (image or video model) and check every tensor and one forward pass against the
    in-memory model."""
    reloaded = type(model).from_pretrained(output_dir).eval()
    saved = reloaded.state_dict()
    for key, tensor in state_dict_converted.items():
        if not torch.equal(saved[key], tensor):
            raise ConversionError(f"saved tensor {key} differs from the converted one")
    config = model.config
    shape = (1, config.num_channels, config.image_size, config.image_size)
    if getattr(config, "backbone", None) == "videomamba":
        shape = (1, config.num_frames, *shape[1:])
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(pixels).logits, reloaded(pixels).logits
    # the tensors are equal (checked above), the logits to float32 rounding: the reloaded tensors sit at other memory
    # alignments (safetensors offsets), and CPU BLAS kernels round differently by alignment (2.4e-7 seen in a Linear)
    if not torch.allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, float(expected.abs().max()))):
        raise ConversionError("the reloaded model does not reproduce the converted model's logits "
                              f"(max difference {float((actual - expected).abs().max()):.3g})")


def push_folder(output_dir: Path, repo_id: str, private: bool = False) -> None:
    """Upload every file of the folder in one commit (create the repo if needed)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=str(path.relative_to(output_dir)), path_or_fileobj=str(path))
        for path in sorted(output_dir.rglob("*"))
        if path.is_file()
    ]
    api.create_commit(repo_id, operations=operations, commit_message="Upload DART model converted from the original release")


def write_verify_and_push(output_dir: Path, model, processor, report: dict, card: dict, args,
                          write_card=write_model_card) -> None:
    """The shared tail of the converters: refuse non-finite weights, write the folder (weights, config, processor,
    model card by `write_card(folder, config, **card)`) through a temporary sibling folder, print the report,
    `--verify` it (reload and compare every tensor) before it moves into place, then `--push_to_hub` as asked in
    `args`. A failure leaves `output_dir` as it was; an existing one (`--overwrite`) keeps the files the converter does
    not write."""
    require_finite(model.state_dict(), "the converted model")
    with StagedOutput(output_dir) as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        write_card(folder, model.config, **card)
        print(json.dumps(report, indent=1))
        if args.verify:
            verify_folder(folder, model, model.state_dict())
            print(f"verified: {report['num_keys']} tensors equal after reload; logits reproduced")
    if args.push_to_hub:
        push_folder(output_dir, args.push_to_hub, private=args.private)
        print(f"pushed {output_dir} to https://huggingface.co/{args.push_to_hub}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS) + [DARMT_VARIANT])
    parser.add_argument("--checkpoint", required=True, help="original .pth file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--weights", choices=["model", "model_ema"], default="model",
                        help="which state dict of a training checkpoint to convert (default: model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true",
                        help="reload the folder, compare every tensor, print the top-5 labels of a bundled photo")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)

    try:
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite,
                                      inputs={"--checkpoint": args.checkpoint})
        model, processor, report = convert(args.variant, args.checkpoint, args.weights)
        source = (f"Converted from the original `{args.variant}` checkpoint of [DART]({ORIGINAL_REPO}) "
                  f"(`{args.weights}` weights) with `conversion/convert_dart_original.py`.")
        if args.variant == DARMT_VARIANT:
            card = dict(title=f"DART {DARMT_HUB_NAME}", source=source,
                        extra_facts={"original variant": args.variant, "converted weights": args.weights,
                                     "parameters": f"{report['num_parameters']:,}"})
            write_verify_and_push(output_dir, model, processor, report, card, args, write_card=write_darmt_model_card)
        else:
            card = dict(
                title=f"DART {VARIANTS[args.variant].hub_name}",
                base_model=None,
                source=source,
                task="image-classification",
                extra_facts={"original variant": args.variant, "converted weights": args.weights,
                             "depth": report["depth"], "parameters": f"{report['num_parameters']:,}"},
            )
            write_verify_and_push(output_dir, model, processor, report, card, args)
        if args.verify:
            for label, prob in top5(model, processor, ASSETS / "chelsea.jpg"):
                print(f"  {prob:7.4f}  {label}")
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
