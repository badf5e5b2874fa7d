"""Checkpoint helpers shared by the converters (`conversion/*.py`) and by `from_backbone` (wrapping pretrained
ViT / DeiT / Vim backbones): safe loading, key renaming by rules, and the key accounting that refuses to drop or leave
out any tensor.

They live in the package (not in `conversion/`) so that `DartForImageClassification.from_pretrained_backbone` works
from an installed `modeling_dart`; the conversion scripts import them from here.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import torch


class ConversionError(Exception):
    """A checkpoint that cannot be converted faithfully."""


def compile_rules(rules: list[tuple[str, str]]) -> list[tuple[re.Pattern, str]]:
    """`(pattern, replacement)` pairs -> compiled patterns anchored at the start of the key."""
    return [(re.compile("^" + pattern), replacement) for pattern, replacement in rules]


def rename_key(key: str, compiled_rules: list[tuple[re.Pattern, str]]) -> str | None:
    """The new name of `key` under the first matching rule, or None when no rule matches."""
    for pattern, replacement in compiled_rules:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


# Vision Mamba backbone keys of the original releases (hustvl/Vim and the darvim_* models of DART, which add the
# scorer under `patch_embed.spn.*`) -> DartForImageClassification names. The ViT blocks of the original DeiT/darvit
# format have their own rules in `conversion/convert_dart_original.py`.
VIM_KEY_RULES: list[tuple[str, str]] = [
    (r"patch_embed\.proj\.(weight|bias)$", r"dart.embeddings.projection.\1"),
    (r"cls_token$", r"dart.embeddings.cls_token"),
    (r"pos_embed$", r"dart.embeddings.position_embeddings"),
    (r"layers\.(\d+)\.mixer\.(.+)$", r"dart.encoder.layers.\1.mixer.\2"),
    (r"layers\.(\d+)\.norm\.weight$", r"dart.encoder.layers.\1.norm.weight"),
    (r"norm_f\.weight$", r"dart.encoder.norm_f.weight"),
    (r"head\.(weight|bias)$", r"classifier.\1"),
]


def safe_torch_load(path: str | Path) -> dict:
    """`torch.load(weights_only=True)` allowing only `argparse.Namespace` (the `args` of training checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle errors, refused globals, truncated files
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint with weights_only=True: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, expected a dict (state dict or wrapper).")
    return checkpoint


def load_original_checkpoint(path: str | Path, weights: str = "model") -> dict[str, torch.Tensor]:
    """Read an original `.pth` (DeiT/DART/Vim training format) safely and return the chosen state dict: `weights`
    (`model` or `model_ema`) of a training checkpoint, DeepSpeed's `module`, or a bare state dict; DDP's `module.`
    prefix is stripped."""
    checkpoint = safe_torch_load(path)
    if weights in checkpoint and isinstance(checkpoint[weights], dict):
        state_dict = checkpoint[weights]
    elif weights == "model" and "module" in checkpoint and isinstance(checkpoint["module"], dict):
        state_dict = checkpoint["module"]
    elif weights == "model" and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict = checkpoint  # a bare state dict
    else:
        entries = ", ".join(sorted(map(str, checkpoint)))[:300]
        raise ConversionError(f"{path} has no '{weights}' state dict (entries: {entries}).")
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"non-tensor entries in the state dict: {bad[:5]}")
    if any(k.startswith("module.") for k in state_dict):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    return dict(state_dict)


def infer_depth(state_dict: dict[str, torch.Tensor], backbone: str, what: str | None = None) -> int:
    """Number of blocks (`blocks.N.*` for ViT, `layers.N.*` for the Mamba backbones); the indices must be 0..N-1."""
    prefix = r"^blocks\.(\d+)\." if backbone == "vit" else r"^layers\.(\d+)\."
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(prefix, k))}
    if not indices:
        what = what or f"a {backbone} checkpoint"
        raise ConversionError(f"no {'blocks' if backbone == 'vit' else 'layers'}.N.* keys: not {what}.")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        raise ConversionError(f"block indices are not contiguous: {sorted(indices)}")
    return depth


def require_tensor(state_dict: dict[str, torch.Tensor], key: str, ndim: int, what: str) -> torch.Tensor:
    """`state_dict[key]`, which must exist and have `ndim` dimensions (else a `ConversionError` naming `what`)."""
    if key not in state_dict:
        raise ConversionError(f"missing key {key!r}: not {what}.")
    tensor = state_dict[key]
    if tensor.dim() != ndim:
        raise ConversionError(f"mis-shaped key {key!r}: expected {ndim} dimensions, got {tuple(tensor.shape)}.")
    return tensor


def infer_mamba_sizes(state_dict: dict[str, torch.Tensor], hidden_size: int, what: str) -> dict:
    """DartConfig keyword arguments of a bidirectional Mamba stack read from its `layers.N.mixer.*` tensors: depth,
    state size, expansion, time-step rank, convolution width and the two bias flags."""
    depth = infer_depth(state_dict, "vim", what)
    a_log = require_tensor(state_dict, "layers.0.mixer.A_log", 2, what)
    dt_proj = require_tensor(state_dict, "layers.0.mixer.dt_proj.weight", 2, what)
    conv = require_tensor(state_dict, "layers.0.mixer.conv1d.weight", 3, what)
    inner, state_size = a_log.shape
    if inner % hidden_size:
        raise ConversionError(f"mixer width {inner} is not a multiple of the model width {hidden_size}.")
    return dict(
        num_hidden_layers=depth,
        state_size=state_size,
        expand=inner // hidden_size,
        time_step_rank=dt_proj.shape[1],
        conv_kernel=conv.shape[-1],
        use_conv_bias="layers.0.mixer.conv1d.bias" in state_dict,
        use_bias="layers.0.mixer.in_proj.bias" in state_dict,
    )


def account_keys(state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rename: Callable,
                 what: str, adapt: Callable | None = None) -> dict[str, torch.Tensor]:
    """Map every original key onto `expected` (converted name -> tensor of the target model) with `rename` (original
    name -> converted name or None); `adapt(key, tensor)` may reshape a tensor first. Raise a `ConversionError` naming
    `what` on unmatched, missing, mis-shaped or doubly mapped keys: no key is dropped, none left uninitialised."""
    converted, unexpected, mismatched = {}, [], []
    for key, tensor in state_dict.items():
        new_key = rename(key)
        if new_key is None or new_key not in expected:
            unexpected.append(key)
            continue
        if new_key in converted:
            raise ConversionError(f"two original keys map to {new_key}")
        if adapt is not None:
            tensor = adapt(key, tensor)
        if tuple(tensor.shape) != tuple(expected[new_key].shape):
            mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[new_key].shape)}")
            continue
        converted[new_key] = tensor.to(expected[new_key].dtype).contiguous()
    missing = sorted(set(expected) - set(converted))
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected[:8]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing[:8]}")
    if mismatched:
        problems.append(f"{len(mismatched)} mis-shaped key(s): {mismatched[:8]}")
    if problems:
        raise ConversionError(f"the checkpoint does not match {what}: " + "; ".join(problems))
    return converted


__all__ = ["ConversionError", "compile_rules", "rename_key", "VIM_KEY_RULES", "safe_torch_load",
           "load_original_checkpoint", "infer_depth", "require_tensor", "infer_mamba_sizes", "account_keys"]
