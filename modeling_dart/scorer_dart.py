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
"""The DART scorer: a CNN trunk (`trunks_dart`) and a score head that turn pixels into a strictly positive score map
`(batch, grid, grid)`. Heads `v1` and `v2` are the original's; `saliency` is a feature-saliency prior plus a learned
correction with a wide density range."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_tuning_dart import channels_last_on_cpu, trunk_chunk_size
from .configuration_dart import DartConfig
from .self_distillation_dart import MilEvidenceHead, attention_scores
from .trunks_dart import ScorerTrunk, wide_dtype

STANDARDIZE_EPS = 1e-8
FEATURE_STD_EPS = 1e-6
_HALF_DTYPES = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def _scorer_construction_dtype():
    """Build the scorer in float32 when the default dtype is half (`AutoModel.from_config(config, dtype=bfloat16)`
    and `torch.set_default_dtype` construct every parameter in the default dtype; `_keep_in_fp32_modules_strict`
    only acts in `from_pretrained`). Its weights are then initialised in float32 as well, not rounded first."""
    previous = torch.get_default_dtype()
    if previous not in _HALF_DTYPES:
        yield
        return
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class DartScoreHead(nn.Module):
    """Two-layer MLP of the score head: `fc2(gelu(fc1(x)))`."""

    def __init__(self, in_features: int, hidden: int, out_features: int):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(hidden_states)))


def standardize(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """`(s - mean) / (std + 1e-8)` with the unbiased std over each image (`"image"`) or the whole batch (`"batch"`).

    Args:
        scores (`torch.Tensor` of shape `(batch, ...)`).
    """
    # in float64, rounded once: the result then does not depend on the order of the mean and std reductions (eager,
    # compiled and differently batched runs agree), which the token geometry would amplify
    wide = scores.to(wide_dtype(scores))
    if scores[0].numel() == 1 and (mode == "image" or scores.shape[0] == 1):
        return torch.zeros_like(scores)  # one value: nothing stands out (its unbiased std is undefined)
    if mode == "batch":
        return ((wide - wide.mean()) / (wide.std() + STANDARDIZE_EPS)).to(scores.dtype)
    flat = wide.reshape(scores.shape[0], -1)
    mean = flat.mean(dim=1).view(-1, *([1] * (scores.dim() - 1)))
    std = flat.std(dim=1).view(-1, *([1] * (scores.dim() - 1)))
    return ((wide - mean) / (std + STANDARDIZE_EPS)).to(scores.dtype)




def resize_to_grid(maps: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """`(batch, C, h, w)` -> `(batch, C, grid, grid)` (or `(batch, C, *grid)` for a `(rows, columns)` grid): area
    average when the map is at least as fine as the grid (each cell averages the positions it covers), bilinear
    (`align_corners=False`) when it is coarser."""
    size = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


class DartSaliencyHead(nn.Module):
    """Score head `"saliency"`: a feature-saliency prior plus a learned per-cell correction, as one logit map.

    The trunk features are standardised per image and channel over the positions, so the head sees the same scale
    whatever the trunk, random or pretrained. The prior at a position is the root-mean-square of those standardised
    features over the channels: how much that position differs from the rest of the image. It is averaged into the
    score cells and standardised over the map. The correction is an MLP `fc2(gelu(fc1(.)))` on each cell's average
    standardised features. The logit is `prior_weight * prior + correction`; `fc2` starts at zero, so an untrained
    head already follows the trunk's feature saliency. (The scorer standardises the logits, so `prior_weight` sets
    the prior's weight relative to the correction; the sharpness is the scorer's temperature.)
    """

    def __init__(self, in_features: int, hidden: int, grid_size: int):
        super().__init__()
        self.grid_size = grid_size
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.prior_weight = nn.Parameter(torch.ones(1))

    def summarize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The parameter-free part: (batch, channels, h, w) features -> the standardised prior `(batch, 1, grid,
        grid)` and each cell's mean standardised features `(batch, grid, grid, channels)` (float32, or float64 for
        float64). A frozen trunk's summaries can be computed once and reused (see `benchmarks/dart_vs_uniform.py`)."""
        features = features.to(torch.promote_types(features.dtype, torch.float32))
        mean = features.mean(dim=(2, 3), keepdim=True)
        if features.shape[-2] * features.shape[-1] > 1:
            normalized = (features - mean) / (features.std(dim=(2, 3), keepdim=True) + FEATURE_STD_EPS)
        else:  # a single position: nothing stands out
            normalized = features - mean
        prior = resize_to_grid(normalized.pow(2).mean(dim=1, keepdim=True).add(FEATURE_STD_EPS).sqrt(), self.grid_size)
        return standardize(prior, "image"), resize_to_grid(normalized, self.grid_size).permute(0, 2, 3, 1)

    def combine(self, prior: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """The learned part: `prior_weight * prior + fc2(gelu(fc1(cells)))` -> `(batch, 1, grid, grid)` logits."""
        return self.prior_weight * prior + self.fc2(F.gelu(self.fc1(cells))).permute(0, 3, 1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, channels, h, w) features -> (batch, 1, grid, grid) logits."""
        return self.combine(*self.summarize(features))


def bounded_exp_density(logits: torch.Tensor, temperature: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """`exp(b * tanh(temperature * logits / b))` with `b = log(max_ratio) / 2`.

    Strictly positive and smooth; any two cells differ by at most `max_ratio` (the exponent lies in `(-b, b)`), and
    near zero it is `exp(temperature * logits)`. The original heads' `sigmoid(z) + 0.1` and `sigmoid(2 z)` cap the
    object/background density ratio of a standardised map at about 2.0x and 2.7x for a small object; this one
    lets the ratio reach `max_ratio`.
    """
    bound = math.log(max_ratio) / 2.0
    return torch.exp(bound * torch.tanh(temperature * logits / bound))


class DartScorer(nn.Module):
    """Predicts a strictly positive score map `(batch, grid, grid)` from the full-resolution input.

    Head v1: per-position MLP -> bilinear resize to the grid -> standardise -> `sigmoid(s) + 0.1`.
    Head v2: channel gates `sigmoid(MLP(spatial mean))`, gated channel sum -> resize -> standardise -> `sigmoid(2 s)`.
    Head saliency: feature-saliency prior + per-cell MLP on the grid ([`DartSaliencyHead`]) -> standardise ->
    [`bounded_exp_density`] with a learnable temperature: the density ratio between two cells reaches
    `config.scorer_max_density_ratio`.
    Head mil: a gated-attention multiple-instance classifier on the trunk's cells (`MilEvidenceHead`, with
    `config.num_labels` classes); its attention, moved onto the grid, averaged over `config.scorer_attention_spread`
    cells, raised to `config.scorer_attention_power` and floored at `1 / config.scorer_max_density_ratio` of the peak
    (`attention_scores`), is the score map, detached: the head learns from its own classification loss on the labels
    ([`DartForImageClassification`] adds it in training), not from the backbone's loss through the token placement.
    """

    def __init__(self, config: DartConfig):
        super().__init__()
        self.version = config.scorer_head
        channels = self._build_trunk(config)
        if self.version == "saliency":
            self.head = DartSaliencyHead(channels, config.scorer_hidden_size, self.grid_size)
            self.log_temperature = nn.Parameter(torch.full((1,), math.log(config.scorer_temperature)))
            self.max_density_ratio = float(config.scorer_max_density_ratio)
        elif self.version == "mil":
            if config.num_labels < 1:
                raise ValueError(f"`scorer_head='mil'` is a classifier and needs `num_labels` >= 1, got "
                                 f"num_labels={config.num_labels}.")
            self.head = MilEvidenceHead(channels, config.num_labels, hidden=config.scorer_hidden_size)
            self.max_density_ratio = float(config.scorer_max_density_ratio)
            self.attention_power = float(config.scorer_attention_power)
            self.attention_spread = int(config.scorer_attention_spread)
        else:
            self.head = DartScoreHead(channels, config.scorer_hidden_size, 1 if self.version == "v1" else channels)
        if self.freeze_trunk:
            self.features.requires_grad_(False)

    def _build_trunk(self, config) -> int:
        """Build the trunk that `config` names (`scorer_trunk`, its depth, `num_channels`) as `self.features`, with the
        grid and freezing settings the forward reads; return the trunk's output channels for the head."""
        self.grid_size = config.score_grid_size
        self.freeze_trunk = config.freeze_scorer_trunk
        trunk = ScorerTrunk(config.scorer_trunk, config.resolved_scorer_trunk_depth(), config.num_channels)
        self.features = trunk.features
        self.trunk_name = config.scorer_trunk
        self.widest_activation_bytes_per_pixel = trunk.widest_activation_bytes_per_pixel
        return trunk.out_channels

    def _apply(self, fn, recurse=True):
        """Casting to float16/bfloat16 leaves the scorer in float32 (devices still move).

        A half-precision rounding of the scorer's weights moves the scores, which moves the token regions by whole
        pixels and so changes every token's content: a `model.to(torch.bfloat16)` would then no longer be a
        lower-precision copy of the float32 model but a different tokenizer. The scorer is a small part of the
        compute, so it stays in float32, as `_keep_in_fp32_modules_strict` keeps it for
        `from_pretrained(dtype=...)` (see `docs/design.md`, "Half precision").
        """

        def keep_float32(tensor):
            cast = fn(tensor)
            if tensor.dtype == torch.float32 and cast.dtype in _HALF_DTYPES:
                return tensor.to(device=cast.device)
            return cast

        return super()._apply(keep_float32, recurse)

    def train(self, mode: bool = True):
        """A frozen trunk stays in eval mode, BatchNorm included, for random and pretrained trunks alike.

        The original leaves the frozen trunk's BatchNorm in train mode while training. That normalises every
        training image with its batch's statistics (the scores, hence the tokens, of an image then depend on the
        other images of its batch, and differ between training and evaluation) and it overwrites the running
        statistics with the training data's, so a "frozen" pretrained trunk drifts from its ImageNet features and
        evaluates with statistics it was never trained with. Frozen here means the function is fixed: fixed
        statistics (the pretrained ones, or the initialised mean 0 / variance 1 of a random trunk, whose He-scaled
        convolutions keep unit-scale activations without batch statistics), no gradients. Inference is eval mode
        in both codes, so released checkpoints give the same outputs. An unfrozen trunk
        (`freeze_scorer_trunk=False`) trains its BatchNorms as usual.
        """
        super().train(mode)
        if self.freeze_trunk:
            self.features.eval()
        return self

    def extract_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Trunk features `(batch, channels, height / stride, width / stride)` (stride 32 at the original depths)."""
        pixel_values = channels_last_on_cpu(pixel_values)
        if self.freeze_trunk:
            with torch.no_grad():
                return self._run_trunk(pixel_values)
        return self._run_trunk(pixel_values)

    def _run_trunk(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # a frozen trunk in eval mode processes every image on its own (fixed BatchNorm statistics), so the batch can
        # be split into chunks (`cpu_tuning_dart.trunk_chunk_size`) without changing the result
        if self.features.training or torch.compiler.is_exporting():
            # exported graphs take the whole batch: a chunk size that depends on the batch would pin it
            return self.features(pixel_values)
        image_bytes = self.widest_activation_bytes_per_pixel * pixel_values.shape[-2] * pixel_values.shape[-1]
        images_per_chunk = trunk_chunk_size(pixel_values, image_bytes)
        if pixel_values.shape[0] <= images_per_chunk:
            return self.features(pixel_values)
        return torch.cat([self.features(chunk) for chunk in pixel_values.split(images_per_chunk)])

    def density(self, logits: torch.Tensor, normalization: str = "image") -> torch.Tensor:
        """Saliency head: `(batch, 1, grid, grid)` logits -> standardised -> bounded exp with the temperature."""
        raw = standardize(logits[:, 0], normalization)
        return bounded_exp_density(raw, self.log_temperature.to(raw.dtype).exp(), self.max_density_ratio)

    def forward(self, pixel_values: torch.Tensor, normalization: str = "image", features: torch.Tensor | None = None,
                grid: tuple[int, int] | None = None, return_features: bool = False):
        """Score map `(batch, grid, grid)`; `features` (the trunk's output for `pixel_values`) skips the trunk; `grid`
        (`(rows, cols)`, heads v1 and v2) overrides the map's size. `return_features=True` returns the pair
        `(score map, trunk features (batch, channels, h, w))`, the features from the same trunk pass."""
        if features is None:
            features = self.extract_features(pixel_values)
        scores = self._score(features, normalization, grid)
        return (scores, features) if return_features else scores

    def _score(self, features: torch.Tensor, normalization: str, grid: tuple[int, int] | None) -> torch.Tensor:
        if grid is None:
            grid = (self.grid_size, self.grid_size)
        elif self.version in ("saliency", "mil") and tuple(grid) != (self.grid_size, self.grid_size):
            raise ValueError(f"`grid` must be ({self.grid_size}, {self.grid_size}) for the {self.version} head, got "
                             f"{grid}.")
        grid = tuple(grid)
        if self.version == "saliency":
            return self.density(self.head(features), normalization)
        if self.version == "mil":
            if normalization != "image":
                raise ValueError(f"The mil head scores each image on its own: `score_normalization` must be 'image', "
                                 f"got {normalization!r}.")
            _, attention = self.head(features.to(self.head.embed.weight.dtype))
            return attention_scores(attention.float(), self.grid_size, self.max_density_ratio,
                                    self.attention_power, self.attention_spread).detach()
        if self.version == "v1":
            raw = self.head(features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, h, w)
        else:
            gates = torch.sigmoid(self.head(features.mean(dim=(2, 3))))  # (B, C)
            raw = torch.einsum("bchw,bc->bhw", features, gates).unsqueeze(1)
        if raw.shape[-2:] != grid:
            raw = F.interpolate(raw, size=grid, mode="bilinear", align_corners=False)
        raw = standardize(raw[:, 0].float(), normalization)  # float32: the 1e-8 guard vanishes in half precision
        if self.version == "v1":
            return torch.sigmoid(raw) + 0.1
        return torch.sigmoid(2.0 * raw)


__all__ = ["DartScorer", "DartScoreHead", "DartSaliencyHead", "bounded_exp_density", "standardize", "resize_to_grid"]
