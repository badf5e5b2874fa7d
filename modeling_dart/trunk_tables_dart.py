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
"""The scorer trunks as data: one `TrunkSpec` per CNN trunk (blocks, stem, last convolution, where the original DART
heads cut it, input normalisation).

This is the one source of the trunk facts: `DartConfig` reads it for its defaults and validation, `trunks_dart` builds
the modules from it. It imports nothing from torch, so the configuration stays light.
"""

from __future__ import annotations

from dataclasses import dataclass


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to a multiple of `divisor`, never below 90% of it (torchvision's MobileNet channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class TrunkSpec:
    """One trunk: its blocks, stem and last convolution, and where the original DART heads cut it.

    Attributes:
        blocks: one row per inverted-residual block: `(kernel, expanded channels, output channels, squeeze-excite,
            activation, stride)`.
        stem_channels / stem_activation: the first 3x3 stride-2 convolution.
        last_channels / last_activation: the 1x1 convolution after the blocks (the last `features` entry).
        head_depths: `features` entries kept by default for each score head.
        padding: `"symmetric"` (torchvision) or `"same"` (TensorFlow).
        input_mean / input_std: the per-channel normalisation the pretrained weights were trained with (what an image
            processor built for a model with this trunk should use).
        stage_sizes: blocks per `features` entry, for trunks that group their blocks into stages as torchvision's
            EfficientNet does (keys `features.{i}.{j}.block.*`); `None` puts every block in an entry of its own, as
            torchvision's MobileNetV3 does (keys `features.{i}.block.*`).
        batch_norm_eps / batch_norm_momentum: of every BatchNorm of the trunk.
        squeeze_excitation: `"mobilenet_v3"` (squeeze to `make_divisible(expanded // 4, 8)` channels, ReLU, hard
            sigmoid) or `"efficientnet"` (squeeze to `max(1, block input channels // 4)`, SiLU, sigmoid), as
            torchvision builds them.
        v1_hidden_size: hidden width of the v1 head's MLP when the original does not use the trunk width at the v1
            cut (`None`: that width).
    """

    blocks: tuple
    stem_channels: int
    stem_activation: str
    last_channels: int
    last_activation: str
    head_depths: dict
    padding: str = "symmetric"
    input_mean: tuple = (0.485, 0.456, 0.406)
    input_std: tuple = (0.229, 0.224, 0.225)
    stage_sizes: tuple | None = None
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    squeeze_excitation: str = "mobilenet_v3"
    v1_hidden_size: int | None = None

    @property
    def entries(self) -> tuple:
        """The block rows of each `features` entry between the stem and the last convolution."""
        if self.stage_sizes is None:
            return tuple((row,) for row in self.blocks)
        grouped, start = [], 0
        for size in self.stage_sizes:
            grouped.append(self.blocks[start : start + size])
            start += size
        return tuple(grouped)

    @property
    def num_entries(self) -> int:
        """`features` entries of the whole trunk: stem + blocks (or stages of blocks) + last convolution."""
        return len(self.entries) + 2

    def output_stride(self, depth: int) -> int:
        """Total stride of the first `depth` entries."""
        stride = 2
        for entry in self.entries[: max(0, depth - 1)]:
            for _, _, _, _, _, block_stride in entry:
                stride *= block_stride
        return stride

    def output_channels(self, depth: int) -> int:
        if depth == self.num_entries:
            return self.last_channels
        return self.entries[depth - 2][-1][2] if depth >= 2 else self.stem_channels


_MOBILENET_V3_SMALL = TrunkSpec(
    blocks=(
        (3, 16, 16, True, "relu", 2),
        (3, 72, 24, False, "relu", 2),
        (3, 88, 24, False, "relu", 1),
        (5, 96, 40, True, "hardswish", 2),
        (5, 240, 40, True, "hardswish", 1),
        (5, 240, 40, True, "hardswish", 1),
        (5, 120, 48, True, "hardswish", 1),
        (5, 144, 48, True, "hardswish", 1),
        (5, 288, 96, True, "hardswish", 2),
        (5, 576, 96, True, "hardswish", 1),
        (5, 576, 96, True, "hardswish", 1),
    ),
    stem_channels=16, stem_activation="hardswish", last_channels=576, last_activation="hardswish",
    head_depths={"v1": 11, "v2": 13},
)
_MOBILENET_V3_LARGE = TrunkSpec(
    blocks=(
        (3, 16, 16, False, "relu", 1),
        (3, 64, 24, False, "relu", 2),
        (3, 72, 24, False, "relu", 1),
        (5, 72, 40, True, "relu", 2),
        (5, 120, 40, True, "relu", 1),
        (5, 120, 40, True, "relu", 1),
        (3, 240, 80, False, "hardswish", 2),
        (3, 200, 80, False, "hardswish", 1),
        (3, 184, 80, False, "hardswish", 1),
        (3, 184, 80, False, "hardswish", 1),
        (3, 480, 112, True, "hardswish", 1),
        (3, 672, 112, True, "hardswish", 1),
        (5, 672, 160, True, "hardswish", 2),
        (5, 960, 160, True, "hardswish", 1),
        (5, 960, 160, True, "hardswish", 1),
    ),
    stem_channels=16, stem_activation="hardswish", last_channels=960, last_activation="hardswish",
    head_depths={"v1": 15, "v2": 17},
)


def _efficientnet_blocks(stages, stem_channels, use_se=False, activation="relu6"):
    """Expand EfficientNet stages `(repeats, kernel, stride, expansion, output channels)` into block rows."""
    rows, channels = [], stem_channels
    for repeats, kernel, stride, expansion, out in stages:
        for index in range(repeats):
            rows.append((kernel, channels * expansion, out, use_se, activation, stride if index == 0 else 1))
            channels = out
    return tuple(rows)


# EfficientNet-B0's stages `(repeats, kernel, stride, expansion, output channels)`, after a 32-channel stem
_EFFICIENTNET_B0_STAGES = (
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)

# EfficientNet-Lite0: EfficientNet-B0's stages without squeeze-excite, with ReLU6, stem and last convolution fixed
_EFFICIENTNET_LITE0 = TrunkSpec(
    blocks=_efficientnet_blocks(_EFFICIENTNET_B0_STAGES, stem_channels=32),
    stem_channels=32, stem_activation="relu6", last_channels=1280, last_activation="relu6",
    # v1 after the last stride-32 stage of width 192 (16 entries), v2 with the last convolution (all 18)
    head_depths={"v1": 16, "v2": 18},
    padding="same",
    # TensorFlow's Lite models take [-1, 1] inputs: the ImageNet weights were trained with mean = std = 0.5
    input_mean=(0.5, 0.5, 0.5),
    input_std=(0.5, 0.5, 0.5),
)

# EfficientNet-B0 in torchvision's layout (`efficientnet_b0().features`): one entry per stage, symmetric padding,
# SiLU, squeeze-excitation with SiLU and sigmoid, BatchNorm eps 1e-5; the trunk of the original DAIR scorer
# (`EfficientNetB0Pred`: the whole trunk, head v1 with a 96-wide MLP). Transformers' `EfficientNet` is TensorFlow's
# variant (asymmetric padding before the stride-2 convolutions, eps 1e-3): another function of the same weights.
_EFFICIENTNET_B0 = TrunkSpec(
    blocks=_efficientnet_blocks(_EFFICIENTNET_B0_STAGES, stem_channels=32, use_se=True, activation="silu"),
    stem_channels=32, stem_activation="silu", last_channels=1280, last_activation="silu",
    head_depths={"v1": 9, "v2": 9},
    stage_sizes=tuple(stage[0] for stage in _EFFICIENTNET_B0_STAGES),
    batch_norm_eps=1e-5,
    batch_norm_momentum=0.1,
    squeeze_excitation="efficientnet",
    v1_hidden_size=96,
)

TRUNKS: dict[str, TrunkSpec] = {
    "mobilenet_v3_small": _MOBILENET_V3_SMALL,
    "mobilenet_v3_large": _MOBILENET_V3_LARGE,
    "efficientnet_lite0": _EFFICIENTNET_LITE0,
    "efficientnet_b0": _EFFICIENTNET_B0,
}


def default_scorer_hidden_size(trunk: str, head: str) -> int:
    """Hidden width of a score head's MLP: for head v1 the original's choice (the trunk's width at the v1 cut, or the
    trunk's `v1_hidden_size`), 96 for the v2 and saliency heads, 128 for the mil head's cell embedding."""
    if head == "mil":
        return 128
    if head != "v1":
        return 96
    spec = TRUNKS[trunk]
    if spec.v1_hidden_size is not None:
        return spec.v1_hidden_size
    return spec.output_channels(spec.head_depths["v1"])


__all__ = ["TRUNKS", "TrunkSpec", "default_scorer_hidden_size", "make_divisible"]
