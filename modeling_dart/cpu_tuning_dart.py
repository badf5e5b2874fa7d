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
"""Tuning for CPUs: the one place where the model code chooses a path by the machine it runs on.

Every function here returns a result equal to the plain path's (the same operations, or the same values), so each
can be removed without changing what a model computes; only speed and memory differ. Each choice, its reason and
its measurement (2-core x86_64 machines, float32, PyTorch 2.13 CPU build):

- `trunk_chunk_size`: the frozen scorer trunk runs a few images at a time on CPU. For a whole batch its widest
  activations exceed glibc's mmap threshold (at most 32 MiB), so they are fresh memory-mapped pages on every call, and
  their page faults cost more than the convolutions. 28 MiB per chunk leaves room for the padded copy of that
  activation. Measured: 13 Lite0 images at 160 pixels made 32.7 MB padded buffers and the frozen trunk took 74-123 ms
  per batch of 64, 52 ms in 11-image chunks; MobileNetV3-Large at 448 ran ~1.3x faster in chunks of 2 than 8 at once.
- `channels_last_on_cpu`: depthwise convolutions run faster channels-last on CPU; for 3 channels an explicit NHWC
  copy is faster than `.contiguous(memory_format=torch.channels_last)` (4 ms against 15 ms for 8 images at 448).
- `conv_weight_layout` / `fused_conv_activation`: a channels-last input with a contiguous weight sends 1x1
  convolutions down a ~3x slower CPU path, so the weight follows the input's layout; and oneDNN's convolution with
  the activation fused in (`torch.ops.mkldnn._convolution_pointwise`, a private op, what `torch.compile` emits on
  CPU) makes one pass over the output instead of two. Without oneDNN, under tracing, with gradients or in another
  dtype it returns None and the caller runs `F.conv2d` and the activation.
- `project_patch_strip`: in a CPU training step, the patch projection of a strip of `P`-pixel patches side by side
  runs as one matrix product over the flattened patches instead of the stride-`P` convolution (the same sums). For
  64 x 36 tokens of 16 pixels, forward and backward took 5 ms instead of 14 ms when the patches need gradients (a
  learned scorer), 2.6 ms instead of 3.2 ms when only the weights do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TRUNK_CHUNK_BYTES = 28 * 2**20
_MKLDNN_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)
# activation module -> (oneDNN attribute, its scalars)
_FUSED_ACTIVATIONS = {nn.ReLU: ("relu", []), nn.Hardswish: ("hardswish", []), nn.ReLU6: ("hardtanh", [0.0, 6.0])}


def trunk_chunk_size(pixel_values: torch.Tensor, bytes_per_image: float) -> int:
    """Images per chunk of a frozen trunk's inference pass: the whole batch off CPU, else as many images as keep the
    widest activation (`bytes_per_image` each) under `TRUNK_CHUNK_BYTES` (at least one)."""
    if pixel_values.device.type != "cpu":
        return pixel_values.shape[0]
    return max(1, int(TRUNK_CHUNK_BYTES // max(bytes_per_image, 1.0)))


def channels_last_on_cpu(pixel_values: torch.Tensor) -> torch.Tensor:
    """`pixel_values` `(batch, channels, height, width)` with channels-last strides on CPU (same values and shape)."""
    if pixel_values.device.type != "cpu" or pixel_values.is_contiguous(memory_format=torch.channels_last):
        return pixel_values
    return pixel_values.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def conv_weight_layout(hidden_states: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`weight` in the memory layout of a channels-last CPU input (same values)."""
    if hidden_states.device.type == "cpu" and hidden_states.is_contiguous(memory_format=torch.channels_last):
        return weight.contiguous(memory_format=torch.channels_last)
    return weight


def fused_conv_activation(hidden_states, weight, bias, conv: nn.Conv2d, activation: nn.Module | None):
    """`activation(F.conv2d(hidden_states, weight, bias, ...conv's stride, padding, dilation, groups))` in one oneDNN
    call, or None where that op does not apply (the caller then runs the plain ops)."""
    if torch.compiler.is_compiling():  # traced graphs take the plain ops (the compiler fuses them itself); checked
        return None  # first: dynamo cannot trace `torch.backends.mkldnn.is_available()`
    if hidden_states.device.type != "cpu" or not hidden_states.is_contiguous(memory_format=torch.channels_last):
        return None
    if _MKLDNN_CONV_POINTWISE is None or not torch.backends.mkldnn.is_available():
        return None
    if hidden_states.dtype != torch.float32 or weight.dtype != torch.float32:
        return None
    if torch.is_grad_enabled() and (hidden_states.requires_grad or weight.requires_grad):
        return None  # the fused op has no autograd
    if activation is not None and type(activation) not in _FUSED_ACTIVATIONS:
        return None
    name, scalars = ("none", []) if activation is None else _FUSED_ACTIVATIONS[type(activation)]
    weight = weight.contiguous(memory_format=torch.channels_last)
    return _MKLDNN_CONV_POINTWISE(
        hidden_states, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups, name,
        scalars, "",
    )


def project_patch_strip(patches: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, patch: int):
    """The stride-`patch` convolution of `patches` `(batch, channels, patch, num_tokens * patch)` with `weight`
    `(hidden, channels, patch, patch)` as one matrix product, `(batch, hidden, 1, num_tokens)`; None outside a CPU
    training step on such a strip (the caller then runs the convolution, as inference always does)."""
    training = torch.is_grad_enabled() and (patches.requires_grad or weight.requires_grad)
    batch, channels, rows, length = patches.shape
    if not (training and patches.device.type == "cpu" and rows == patch):
        return None
    num_tokens = length // patch
    flat = patches.reshape(batch, channels, patch, num_tokens, patch).permute(0, 3, 1, 2, 4)
    flat = flat.reshape(batch, num_tokens, channels * patch * patch)
    tokens = F.linear(flat, weight.reshape(weight.shape[0], -1), bias)  # (B, N, D)
    return tokens.transpose(1, 2).unsqueeze(2)  # the convolution's (B, D, 1, N)


__all__ = ["trunk_chunk_size", "channels_last_on_cpu", "conv_weight_layout", "fused_conv_activation",
           "project_patch_strip"]
