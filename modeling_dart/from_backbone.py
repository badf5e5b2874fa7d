"""Wrap a pretrained ViT / DeiT (Transformers) or Vision Mamba (original `hustvl/Vim` release) backbone in DART.

    from modeling_dart import DartForImageClassification

    model = DartForImageClassification.from_pretrained_backbone("facebook/deit-small-patch16-224")   # uniform scorer
    model = DartForImageClassification.from_pretrained_backbone(
        "google/vit-base-patch16-384", scorer="learned", image_size=448, score_grid_size=14)
    model = DartForImageClassification.from_pretrained_backbone("vim_t_midclstok_76p1acc.pth")       # Vim release

What is carried over (source -> DART):

- ViT / DeiT (`ViTForImageClassification`, `DeiTForImageClassification`, `DeiTForImageClassificationWithTeacher`,
  folders or Hub ids): the patch embedding -> `dart.embeddings.projection`; the cls token; the position table with
  its cls row (resized to `score_grid_size` when the source was trained on another grid, with the interpolation of
  Transformers' `interpolate_pos_encoding`: bicubic, `align_corners=False`); every block, the separate q/k/v
  projections fused into our `qkv`; the final LayerNorm; the classifier. The source's image processor settings
  (resize, crop ratio, resampling, mean/std) carry over to the DART processor, scaled to `image_size`.
- DeiT's distillation token: DART's backbone has one cls token and no distillation token, so the token and its
  position row are left out (listed in the report under `dropped`, never silently). The model then sees the sequence
  `[cls, patches]`, as a ViT does; since the distilled DeiT's blocks attended to the distillation token too, its
  logits are not reproduced exactly (the report says `exact: false`). The two heads of
  `DeiTForImageClassificationWithTeacher` become one linear classifier on the cls token: by default
  (`distillation_head="average"`) their average, `(W_cls + W_dist) / 2`, whose logits are
  `(cls_head(h) + distillation_head(h)) / 2` -- the averaging the teacher model does at inference, applied to the
  cls token; `distillation_head="cls"` keeps the cls head alone.
- Vim (a `.pth` of the original release, read with `torch.load(weights_only=True)`): the darvim key names without the
  scorer (`patch_embed.proj`, `cls_token`, `pos_embed` with the cls row in the middle, `layers.N.mixer.*`,
  `layers.N.norm`, `norm_f`, `head`) -> `backbone="vim"`; widths and depth are read from the tensors.

Scorer: `"uniform"` (constant scores: at `image_size == score_grid_size * patch_size` and `num_tokens ==
score_grid_size ** 2` the tokens are exactly the source's patch grid, so the DART model reproduces a ViT source's
logits) or `"learned"` (trunk + head initialised at random; `scorer_trunk_weights` loads pretrained trunk weights
through `load_scorer_trunk_weights`). A random trunk is left trainable by default (frozen at random, its features
carry no content); a pretrained one frozen, as in the original.

Every tensor of the source maps onto exactly one tensor of the DART model and every backbone tensor of the DART
model is filled; anything else is a `ConversionError` (a `ValueError`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification

from .configuration_dart import DartConfig
from .conversion_utils import (
    VIM_KEY_RULES,
    ConversionError,
    account_keys,
    compile_rules,
    infer_mamba_sizes,
    load_original_checkpoint,
    rename_key,
    require_tensor,
)

SCORER_PREFIX = "dart.embeddings.scorer."
LABELS_FILE = Path(__file__).resolve().parent / "data" / "imagenet1k_id2label.json"
# source architecture -> prefix of its base model in the state dict
SUPPORTED_ARCHITECTURES = {
    "ViTForImageClassification": "vit",
    "DeiTForImageClassification": "deit",
    "DeiTForImageClassificationWithTeacher": "deit",
}
DISTILLATION_HEADS = ("average", "cls")
SCORERS = ("uniform", "learned")
# DeiT evaluation preprocessing (also Vim's): resize the shorter side to image_size / 0.875, centre crop, ImageNet
IMAGENET_MEAN, IMAGENET_STD, DEIT_CROP_PCT = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875


# ---------------------------------------------------------------------------------------------- position tables
def resize_position_table(table: torch.Tensor, cls_row: int, new_grid: int, new_cls_row: int | None = None) -> torch.Tensor:
    """Resize a square position table with one cls row to `new_grid x new_grid` patch rows.

    The patch rows are laid out as a `(grid, grid)` image with `hidden` channels and resized with bicubic
    interpolation, `align_corners=False` -- the call Transformers' ViT/DeiT `interpolate_pos_encoding` makes -- and
    the cls row is put back at `new_cls_row` (default: `cls_row` for a leading cls row, the middle `(new_grid**2 +
    1) // 2` for a middle one, as Vim keeps it).

    Args:
        table (`torch.Tensor` of shape `(1, grid * grid + 1, hidden)`).
        cls_row (`int`): index of the cls row in `table`.
        new_grid (`int`): side of the new grid.

    Returns:
        `torch.Tensor` of shape `(1, new_grid * new_grid + 1, hidden)`.
    """
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f"`table` must have shape (1, grid * grid + 1, hidden), got {tuple(table.shape)}.")
    rows, hidden = table.shape[1], table.shape[2]
    grid = math.isqrt(rows - 1)
    if grid * grid != rows - 1:
        raise ValueError(f"`table` has {rows} rows; expected one cls row plus a square grid (1 + g * g).")
    if not 0 <= cls_row < rows:
        raise ValueError(f"`cls_row` must be in [0, {rows}), got {cls_row}.")
    if isinstance(new_grid, bool) or not isinstance(new_grid, int) or new_grid < 1:
        raise ValueError(f"`new_grid` must be a positive integer, got {new_grid!r}.")
    if new_cls_row is None:
        new_cls_row = 0 if cls_row == 0 else (new_grid * new_grid + 1) // 2
    cls = table[:, cls_row : cls_row + 1]
    patches = torch.cat([table[:, :cls_row], table[:, cls_row + 1 :]], dim=1)
    if new_grid != grid:
        image = patches.reshape(1, grid, grid, hidden).permute(0, 3, 1, 2)
        image = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
        patches = image.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, hidden)
    return torch.cat([patches[:, :new_cls_row], cls, patches[:, new_cls_row:]], dim=1)


# ----------------------------------------------------------------------------------------------------- helpers
def _positive_int(name: str, value, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")
    return value


def _square(name: str, value) -> int:
    """An int, or a pair of equal ints (ViT configs allow both)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConversionError(f"the source's `{name}` is {tuple(value)}; only square {name}s are supported.")
        value = value[0]
    return int(value)


def imagenet_labels(num_labels: int) -> dict[int, str]:
    if num_labels == 1000 and LABELS_FILE.is_file():
        return {int(k): v for k, v in json.loads(LABELS_FILE.read_text()).items()}
    return {i: f"LABEL_{i}" for i in range(num_labels)}


def _scorer_config(scorer: str, scorer_trunk, scorer_head, scorer_trunk_depth, freeze_scorer_trunk,
                   scorer_trunk_weights) -> dict[str, Any]:
    if scorer not in SCORERS:
        raise ValueError(f"`scorer` must be one of {SCORERS}, got {scorer!r}.")
    if scorer == "uniform":
        given = {name: value for name, value in (("scorer_trunk", scorer_trunk), ("scorer_head", scorer_head),
                                                  ("scorer_trunk_depth", scorer_trunk_depth),
                                                  ("scorer_trunk_weights", scorer_trunk_weights)) if value is not None}
        if given:
            raise ValueError(f"{sorted(given)} only apply to `scorer='learned'` (the uniform scorer has no network).")
        return {"scorer": "uniform"}
    kwargs: dict[str, Any] = {"scorer": "learned"}
    if scorer_trunk is not None:
        kwargs["scorer_trunk"] = scorer_trunk
    if scorer_head is not None:
        kwargs["scorer_head"] = scorer_head
    if scorer_trunk_depth is not None:
        kwargs["scorer_trunk_depth"] = scorer_trunk_depth
    # a random trunk frozen would stay random (its features vanish through untrained BatchNorms): train it then
    kwargs["freeze_scorer_trunk"] = (scorer_trunk_weights is not None) if freeze_scorer_trunk is None else freeze_scorer_trunk
    return kwargs


def load_trunk_weights_hook(model, source) -> list[str]:
    """Load pretrained scorer-trunk weights with `modeling_dart.load_scorer_trunk_weights(model, source)`."""
    try:
        from . import load_scorer_trunk_weights
    except ImportError:
        try:
            from .trunks_dart import load_scorer_trunk_weights
        except ImportError as error:
            raise ConversionError(
                "`scorer_trunk_weights` needs `modeling_dart.load_scorer_trunk_weights`, which this installation does "
                "not have."
            ) from error
    try:
        skipped = load_scorer_trunk_weights(model, source)
    except (KeyError, ValueError, FileNotFoundError, OSError, ImportError, RuntimeError) as error:
        raise ConversionError(f"cannot load scorer trunk weights from {source!r}: {error}") from error
    return list(skipped or [])


def _build_model(config_kwargs: dict[str, Any], model_class=None):
    """`model_class(config)` in eval mode; by default the class that `AutoModelForImageClassification` registers for
    `DartConfig` (this module sits below the model classes and never imports them)."""
    try:
        config = DartConfig(**config_kwargs)
    except (ValueError, TypeError) as error:
        raise ConversionError(f"cannot build a DART config for this source: {error}") from error
    if model_class is None:
        return AutoModelForImageClassification.from_config(config).eval()
    return model_class(config).eval()


def _fill(model, converted: dict[str, torch.Tensor]) -> None:
    """Load the converted backbone tensors; the scorer keeps its initialisation (strict: nothing else may be left)."""
    own = model.state_dict()
    state = {k: v for k, v in own.items() if k.startswith(SCORER_PREFIX)}
    state.update(converted)
    model.load_state_dict(state, strict=True)


def _target_geometry(source_grid: int, patch: int, image_size, score_grid_size, num_tokens) -> tuple[int, int, int]:
    grid = _positive_int("score_grid_size", score_grid_size) or source_grid
    size = _positive_int("image_size", image_size) or grid * patch
    tokens = _positive_int("num_tokens", num_tokens) or grid * grid
    return grid, size, tokens


# --------------------------------------------------------------------------------------------- image processor
def processor_settings(source_processor: dict | None, image_size: int) -> tuple[dict[str, Any], str]:
    """DartImageProcessor keyword arguments that preprocess like the source, scaled to `image_size`, and a note.

    A source that resizes then centre-crops keeps its crop ratio (e.g. DeiT's 256 -> 224 becomes 512 -> 448 at
    `image_size=448`); one that resizes straight to its input size (ViT's 224x224) resizes straight to `image_size`.
    Resampling, rescaling and the mean/std carry over. Without a source processor: DeiT's evaluation preprocessing.
    """
    crop_size = {"height": image_size, "width": image_size}
    if source_processor is None:
        shortest = int(image_size / DEIT_CROP_PCT)
        return ({"size": {"shortest_edge": shortest}, "crop_size": crop_size, "image_mean": list(IMAGENET_MEAN),
                 "image_std": list(IMAGENET_STD)},
                f"DeiT evaluation preprocessing (shorter side {shortest}, centre crop {image_size}, ImageNet mean/std)")
    size = source_processor.get("size") or {}
    size = {"shortest_edge": size} if isinstance(size, int) else dict(size)
    crop = source_processor.get("crop_size") or {}
    if bool(source_processor.get("do_center_crop")) and crop.get("height"):
        scale = image_size / crop["height"]
        scaled = {key: round(value * scale) for key, value in size.items() if key in ("shortest_edge", "height", "width")}
        if not scaled:
            raise ConversionError(f"unsupported `size` in the source's image processor: {size}")
        settings: dict[str, Any] = {"size": scaled, "crop_size": crop_size, "do_center_crop": True}
    elif "height" in size and "width" in size:
        settings = {"size": dict(crop_size), "crop_size": crop_size, "do_center_crop": False}
    elif "shortest_edge" in size:  # an aspect-keeping resize without a crop: crop to the square input
        settings = {"size": {"shortest_edge": image_size}, "crop_size": crop_size, "do_center_crop": True}
    else:
        raise ConversionError(f"unsupported `size` in the source's image processor: {size}")
    for key in ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_convert_rgb"):
        if source_processor.get(key) is not None:
            settings[key] = source_processor[key]
    kind = source_processor.get("image_processor_type", "image processor")
    return settings, f"the source's {kind} settings, scaled to {image_size}"


def _source_processor_dict(source: str, **hub_kwargs) -> dict | None:
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(source, **hub_kwargs)
    except (OSError, ValueError):
        return None
    return settings or None


# ---------------------------------------------------------------------------------------------------- ViT/DeiT
def _vit_rules(prefix: str) -> list[tuple[re.Pattern, str]]:
    p = re.escape(prefix)
    return compile_rules([
        (p + r"\.embeddings\.cls_token$", "dart.embeddings.cls_token"),
        (p + r"\.embeddings\.position_embeddings$", "dart.embeddings.position_embeddings"),
        (p + r"\.embeddings\.patch_embeddings\.projection\.(weight|bias)$", r"dart.embeddings.projection.\1"),
        (p + r"\.layers\.(\d+)\.attention\.qkv\.(weight|bias)$", r"dart.encoder.layer.\1.attention.qkv.\2"),
        (p + r"\.layers\.(\d+)\.attention\.o_proj\.(weight|bias)$", r"dart.encoder.layer.\1.attention.proj.\2"),
        (p + r"\.layers\.(\d+)\.(layernorm_before|layernorm_after)\.(weight|bias)$", r"dart.encoder.layer.\1.\2.\3"),
        (p + r"\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"dart.encoder.layer.\1.mlp.\2.\3"),
        (p + r"\.layernorm\.(weight|bias)$", r"dart.encoder.layernorm.\1"),
        (r"classifier\.(weight|bias)$", r"classifier.\1"),
    ])


def fuse_qkv(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Replace every layer's `attention.{q,k,v}_proj.{weight,bias}` by one `attention.qkv.*` (rows q, then k, then v:
    the layout our fused projection splits). A layer with some but not all three is an error."""
    fused = dict(state_dict)
    pattern = re.compile("^" + re.escape(prefix) + r"\.layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$")
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in state_dict:
        if match := pattern.match(key):
            groups.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = key
    for (layer, kind), keys in sorted(groups.items()):
        if set(keys) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(keys))
            raise ConversionError(f"layer {layer}: the attention has {sorted(keys)} {kind} projections but not "
                                  f"{missing}; cannot fuse q/k/v.")
        fused[f"{prefix}.layers.{layer}.attention.qkv.{kind}"] = torch.cat([fused.pop(keys[c]) for c in "qkv"], dim=0)
    return fused


def _load_transformers_source(source, hub_kwargs: dict[str, Any]):
    """`(model, architecture, source_processor_dict)` for a folder, a Hub id or a loaded Transformers model."""
    import transformers

    if isinstance(source, transformers.PreTrainedModel):
        architecture = type(source).__name__
        if architecture not in SUPPORTED_ARCHITECTURES:
            raise ConversionError(f"cannot wrap a {architecture}; supported: {sorted(SUPPORTED_ARCHITECTURES)}.")
        return source.eval(), architecture, None
    source = str(source)
    try:
        config = transformers.AutoConfig.from_pretrained(source, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ConversionError(f"cannot read a Transformers config from {source!r}: {error}") from error
    architectures = list(getattr(config, "architectures", None) or [])
    supported = [name for name in architectures if name in SUPPORTED_ARCHITECTURES]
    if config.model_type not in ("vit", "deit") or not supported:
        raise ConversionError(
            f"{source!r} is a {config.model_type!r} model with architectures {architectures or 'unknown'}; supported: "
            f"{sorted(SUPPORTED_ARCHITECTURES)} (image classifiers with their heads), or a Vim release `.pth` file."
        )
    architecture = supported[0]
    model_class = getattr(transformers, architecture)
    model, info = model_class.from_pretrained(source, config=config, output_loading_info=True, **hub_kwargs)
    problems = {name: sorted(info.get(name) or []) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {name: keys for name, keys in problems.items() if keys}
    if problems or info.get("error_msgs"):
        raise ConversionError(f"{source!r} does not load cleanly as a {architecture} (nothing would be left out "
                              f"silently): {problems} {info.get('error_msgs') or ''}".strip())
    return model.eval(), architecture, _source_processor_dict(source, **hub_kwargs)


def convert_transformers_vit(source, *, scorer="uniform", scorer_trunk=None, scorer_head=None,
                             scorer_trunk_depth=None, freeze_scorer_trunk=None, scorer_trunk_weights=None,
                             image_size=None, score_grid_size=None, num_tokens=None, distillation_head="average",
                             model_class=None, **hub_kwargs):
    """`(model, processor_kwargs, report)` for a Transformers ViT / DeiT image classifier (see the module docstring)."""
    if distillation_head not in DISTILLATION_HEADS:
        raise ValueError(f"`distillation_head` must be one of {DISTILLATION_HEADS}, got {distillation_head!r}.")
    scorer_kwargs = _scorer_config(scorer, scorer_trunk, scorer_head, scorer_trunk_depth, freeze_scorer_trunk,
                                   scorer_trunk_weights)
    source_model, architecture, source_processor = _load_transformers_source(source, hub_kwargs)
    prefix = SUPPORTED_ARCHITECTURES[architecture]
    cfg = source_model.config
    patch, source_size = _square("patch_size", cfg.patch_size), _square("image_size", cfg.image_size)
    if source_size % patch:
        raise ConversionError(f"the source's image_size {source_size} is not a multiple of its patch_size {patch}.")
    source_grid = source_size // patch
    grid, size, tokens = _target_geometry(source_grid, patch, image_size, score_grid_size, num_tokens)
    if not isinstance(cfg.hidden_act, str):
        raise ConversionError(f"the source's hidden_act {cfg.hidden_act!r} is not a named activation.")

    state = fuse_qkv(source_model.state_dict(), prefix)
    dropped: dict[str, str] = {}
    distilled = prefix == "deit"
    if distilled:
        token_key = f"{prefix}.embeddings.distillation_token"
        if token_key not in state:
            raise ConversionError(f"a {architecture} without {token_key!r}")
        state.pop(token_key)
        dropped[token_key] = "DART's backbone has no distillation token (its position row is left out too)"
    if architecture == "DeiTForImageClassificationWithTeacher":
        heads = {kind: {part: state.pop(f"{kind}_classifier.{part}") for part in ("weight", "bias")}
                 for kind in ("cls", "distillation")}
        if distillation_head == "average":
            for part in ("weight", "bias"):
                state[f"classifier.{part}"] = (heads["cls"][part] + heads["distillation"][part]) / 2
        else:
            for part in ("weight", "bias"):
                state[f"classifier.{part}"] = heads["cls"][part]
                dropped[f"distillation_classifier.{part}"] = "distillation_head='cls' keeps the cls head alone"

    num_labels = state["classifier.weight"].shape[0] if "classifier.weight" in state else cfg.num_labels
    id2label = {int(k): v for k, v in cfg.id2label.items()} if len(cfg.id2label) == num_labels else imagenet_labels(num_labels)
    model = _build_model(dict(
        backbone="vit", image_size=size, patch_size=patch, num_channels=cfg.num_channels, score_grid_size=grid,
        num_tokens=tokens, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob, initializer_range=cfg.initializer_range,
        layer_norm_eps=cfg.layer_norm_eps, qkv_bias=cfg.qkv_bias, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, **scorer_kwargs,
    ), model_class)
    position_key = f"{prefix}.embeddings.position_embeddings"
    special_rows = 2 if distilled else 1

    def adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key != position_key:
            return tensor
        if tensor.shape[1] != special_rows + source_grid**2:
            raise ConversionError(f"{key} has {tensor.shape[1]} rows; a {source_grid}x{source_grid} grid with "
                                  f"{special_rows} special row(s) has {special_rows + source_grid ** 2}.")
        table = torch.cat([tensor[:, :1], tensor[:, special_rows:]], dim=1)  # the cls row, then the patch rows
        return resize_position_table(table, 0, grid)

    rules = _vit_rules(prefix)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(SCORER_PREFIX)}
    converted = account_keys(state, expected, lambda key: rename_key(key, rules), f"a DART {architecture}", adapt)
    _fill(model, converted)
    skipped = load_trunk_weights_hook(model, scorer_trunk_weights) if scorer_trunk_weights is not None else []

    processor_kwargs, processor_note = processor_settings(source_processor, size)
    report = _report(model, architecture, source_grid, converted, dropped, scorer_trunk_weights, skipped,
                     processor_note, exact=not distilled)
    if distilled:
        report["distillation_head"] = distillation_head if architecture.endswith("WithTeacher") else "none"
    return model, processor_kwargs, report


def _report(model, architecture, source_grid, converted, dropped, trunk_weights, skipped, processor_note, exact):
    config = model.config
    uniform_grid = (config.scorer == "uniform" and config.image_size == config.base_image_size
                    and config.num_tokens == config.score_grid_size**2 and config.score_grid_size == source_grid)
    return {
        "architecture": architecture,
        "backbone": config.backbone,
        "hidden_size": config.hidden_size,
        "depth": config.num_hidden_layers,
        "num_labels": config.num_labels,
        "source_grid": source_grid,
        "score_grid_size": config.score_grid_size,
        "position_table_resized": source_grid != config.score_grid_size,
        "image_size": config.image_size,
        "num_tokens": config.num_tokens,
        "scorer": config.scorer if config.scorer == "uniform" else
        f"learned ({config.scorer_trunk}, head {config.scorer_head}, trunk "
        f"{'from ' + str(trunk_weights) if trunk_weights is not None else 'random'}, "
        f"{'frozen' if config.freeze_scorer_trunk else 'trainable'})",
        "trunk_keys_beyond_depth": len(skipped),
        # whether the DART model computes what the source computes (uniform grid, source grid, nothing dropped)
        "exact": bool(uniform_grid and exact),
        "dropped": dropped,
        "processor": processor_note,
        "num_keys": len(converted),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }


# ------------------------------------------------------------------------------------------------------------ Vim
_VIM_RULES = compile_rules(VIM_KEY_RULES)
VIM_WHAT = "a Vision Mamba checkpoint of the original release"


def convert_vim_checkpoint(path, *, weights="model", scorer="uniform", scorer_trunk=None, scorer_head=None,
                           scorer_trunk_depth=None, freeze_scorer_trunk=None, scorer_trunk_weights=None,
                           image_size=None, score_grid_size=None, num_tokens=None, model_class=None):
    """`(model, processor_kwargs, report)` for an original Vim `.pth` (cls token in the middle of the sequence)."""
    scorer_kwargs = _scorer_config(scorer, scorer_trunk, scorer_head, scorer_trunk_depth, freeze_scorer_trunk,
                                   scorer_trunk_weights)
    state = load_original_checkpoint(path, weights)
    scorer_keys = [k for k in state if k.startswith("patch_embed.spn.")]
    if scorer_keys:
        raise ConversionError(f"{path} holds a DART scorer ({scorer_keys[0]}, ...): it is a darvim checkpoint; convert "
                              "it with conversion/convert_dart_original.py.")
    if any(k.startswith("blocks.") for k in state):
        raise ConversionError(f"{path} has ViT blocks (blocks.N.*), not Vim layers: wrap Transformers ViT/DeiT "
                              "folders instead, or convert DART checkpoints with conversion/convert_dart_original.py.")
    patch = require_tensor(state, "patch_embed.proj.weight", 4, VIM_WHAT)
    hidden, channels, patch_h, patch_w = patch.shape
    if patch_h != patch_w:
        raise ConversionError(f"non-square patches {patch_h}x{patch_w} are not supported.")
    require_tensor(state, "cls_token", 3, VIM_WHAT + " with a cls token")
    pos = require_tensor(state, "pos_embed", 3, VIM_WHAT)
    head = require_tensor(state, "head.weight", 2, VIM_WHAT)
    source_grid = math.isqrt(pos.shape[1] - 1)
    if source_grid * source_grid != pos.shape[1] - 1:
        raise ConversionError(f"pos_embed has {pos.shape[1]} rows; expected 1 + g*g (a cls row and a square grid).")
    sizes = infer_mamba_sizes(state, hidden, VIM_WHAT)
    grid, size, tokens = _target_geometry(source_grid, patch_h, image_size, score_grid_size, num_tokens)
    id2label = imagenet_labels(head.shape[0])
    model = _build_model(dict(
        backbone="vim", image_size=size, patch_size=patch_h, num_channels=channels, score_grid_size=grid,
        num_tokens=tokens, hidden_size=hidden, residual_in_fp32=True, layer_norm_epsilon=1e-5,
        cls_token_position="middle", bidirectional_divide_out=True, id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, **sizes, **scorer_kwargs,
    ), model_class)

    def adapt(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key == "pos_embed":
            return resize_position_table(tensor, (source_grid**2 + 1) // 2, grid)
        return tensor

    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(SCORER_PREFIX)}
    converted = account_keys(state, expected, lambda key: rename_key(key, _VIM_RULES), f"a DART Vim ({VIM_WHAT})",
                             adapt)
    _fill(model, converted)
    skipped = load_trunk_weights_hook(model, scorer_trunk_weights) if scorer_trunk_weights is not None else []
    processor_kwargs, processor_note = processor_settings(None, size)
    report = _report(model, "Vim (original release)", source_grid, converted, {}, scorer_trunk_weights, skipped,
                     processor_note, exact=True)
    report["weights"] = weights
    return model, processor_kwargs, report


# ------------------------------------------------------------------------------------------------------- entry
def convert_backbone(source, *, weights: str = "model", **options):
    """`(model, processor_kwargs, report)` for any supported source: a `.pth` file is a Vim release checkpoint;
    anything else (a folder, a Hub id, a loaded model) a Transformers ViT / DeiT image classifier."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
        options.pop("distillation_head", None)
        hub = {k: options.pop(k) for k in ("revision", "token", "cache_dir") if k in options}
        if hub:
            raise ValueError(f"{sorted(hub)} apply to Hub sources, not to the file {source}.")
        return convert_vim_checkpoint(source, weights=weights, **options)
    if weights != "model":
        raise ValueError("`weights` picks a state dict of a Vim `.pth` file; Transformers sources have one.")
    return convert_transformers_vit(source, **options)


def wrap_pretrained_backbone(source, **options):
    """A DART image classifier wrapping `source` (see the module docstring for the options; `model_class` picks the
    class, by default `DartForImageClassification`); the conversion report is kept in `model.conversion_report`."""
    model, _, report = convert_backbone(source, **options)
    model.conversion_report = report
    return model


__all__ = ["convert_backbone", "wrap_pretrained_backbone", "resize_position_table", "fuse_qkv", "processor_settings",
           "convert_transformers_vit", "convert_vim_checkpoint"]
