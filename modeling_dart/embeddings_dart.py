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
"""DART embeddings: pixels -> adaptive tokens. The scorer's map is cut into token rows and patches (`partition_dart`),
each patch is resampled to `patch_size x patch_size` pixels and projected, and the position table is resampled by
area overlap."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_dart import DartConfig
from .partition_dart import (
    piecewise_linear_quantiles,
    row_resampling_weights,
    sample_regions,
    strip_resampling_weights,
    token_boxes,
    score_density,
)
from .cpu_tuning_dart import project_patch_strip
from .scorer_dart import _HALF_DTYPES, DartScorer, _scorer_construction_dtype
from .trunks_dart import wide_dtype

ROW_MARGINAL_EPS = 1e-8
# the largest magnitude accepted in `pixel_values`: normalised pixels lie within a few units of 0 (raw 0..255 floats
# still pass); far larger values overflow the trunk and the projection to inf/NaN
MAX_PIXEL_MAGNITUDE = 1e4

# --------------------------------------------------------------------------------------------------- embeddings
GEOMETRY_FREQUENCIES = 4  # Fourier octaves per geometry feature: sin/cos(pi * 2^k * x), k = 0..3
GEOMETRY_MIN_SIZE = 1e-4  # smallest token side, as a fraction of the input side, that the size feature tells apart


class DartTokenGeometryEmbedding(nn.Module):
    """A learned embedding of each token's geometry (`config.token_geometry_embedding`; not in the original).

    Five features per token, each in [0, 1]: the centre `(x, y)` of its region as fractions of the input's width and
    height, its width and height on a log scale (`1 + log(side) / log(1 / GEOMETRY_MIN_SIZE)` of the side's fraction
    of the input, the fraction clamped to `[GEOMETRY_MIN_SIZE, 1]`), and its rank in the token order `(n + 0.5) / num_tokens`. Each feature `f` is
    expanded to `[f, sin(pi 2^k f), cos(pi 2^k f)]` for `k < GEOMETRY_FREQUENCIES`, and a linear layer maps the 45
    values to `hidden_size`. The layer is zero-initialised, so a new model starts exactly as one without it. The
    features depend on the token edges, so gradients reach the scorer through them too.
    """

    num_features = 5 * (1 + 2 * GEOMETRY_FREQUENCIES)

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size, self.num_features))
        self.bias = nn.Parameter(torch.zeros(hidden_size))

    @staticmethod
    def features(regions: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`(batch, num_tokens, 4)` boxes `(x0, y0, x1, y1)` in input pixels -> `(batch, num_tokens, 45)`."""
        x0, y0, x1, y1 = regions.unbind(-1)
        log_range = math.log(1.0 / GEOMETRY_MIN_SIZE)

        def log_size(side, total):
            return 1.0 + torch.log((side / total).clamp(min=GEOMETRY_MIN_SIZE, max=1.0)) / log_range

        num_tokens = regions.shape[1]
        rank = (torch.arange(num_tokens, device=regions.device, dtype=regions.dtype) + 0.5) / num_tokens
        raw = torch.stack(
            [(x0 + x1) / (2 * width), (y0 + y1) / (2 * height), log_size(x1 - x0, width), log_size(y1 - y0, height),
             rank.expand_as(x0)],
            dim=-1,
        )  # (B, N, 5)
        octaves = math.pi * 2.0 ** torch.arange(GEOMETRY_FREQUENCIES, device=raw.device, dtype=raw.dtype)
        angles = (raw.unsqueeze(-1) * octaves).flatten(-2)  # (B, N, 5 * K)
        return torch.cat([raw, angles.sin(), angles.cos()], dim=-1)

    def forward(self, regions: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """`(batch, num_tokens, 4)` boxes in input pixels -> `(batch, num_tokens, hidden_size)`."""
        return F.linear(self.features(regions, height, width).to(self.weight.dtype), self.weight, self.bias)


@dataclass
class DartEmbeddingsOutput:
    """What the DART embeddings produce for a batch.

    Attributes:
        embeddings (`(batch, num_tokens + 1, hidden_size)`): tokens + positions (+ the token geometry embedding,
            with `config.token_geometry_embedding`) with the cls token inserted at `cls_index`: the input of the
            first block.
        patch_tokens (`(batch, num_tokens, hidden_size)`): projected patches, before positions.
        position_embeddings (`(batch, num_tokens, hidden_size)`): resampled position embeddings of the patches.
        cls_index (`int`): index of the cls token in `embeddings`.
        score_map (`(batch, grid, grid)`): the scorer's output.
        pdf (`(batch, grid * grid)`): the score map normalised to sum 1.
        row_heights (`(batch, num_rows)`): token-row heights in base-grid pixels (they sum to `grid * patch_size`).
        resampled_pdf (`(batch, num_rows * grid)`): the pdf resampled into the token rows.
        token_edges (`(batch, num_tokens + 1)`): token boundaries along the concatenated row strip, in strip pixels
            (row `i` occupies `[i * width, (i + 1) * width)`).
        row_edges (`(batch, num_rows + 1)`): token-row boundaries in input pixels.
        regions (`(batch, num_tokens, 4)`): each token's source box `(x0, y0, x1, y1)` in input pixels (for a token
            that straddles two rows, its widest piece).
        scorer_features (`(batch, channels, h, w)` or None): the learned scorer trunk's features from the pass that
            scored the image, when asked for (`return_scorer_features=True`).
    """

    embeddings: torch.Tensor
    patch_tokens: torch.Tensor
    position_embeddings: torch.Tensor
    cls_index: int
    score_map: torch.Tensor
    pdf: torch.Tensor
    row_heights: torch.Tensor
    resampled_pdf: torch.Tensor
    token_edges: torch.Tensor
    row_edges: torch.Tensor
    regions: torch.Tensor
    scorer_features: torch.Tensor | None = None


def check_pixel_values(pixel_values, num_channels: int, min_size: int, name: str = "pixel_values") -> None:
    """Raise a clear `TypeError`/`ValueError` unless `pixel_values` is a finite float tensor (B, C, H, W)."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape (batch, {num_channels}, height, width), got "
                        f"{type(pixel_values).__name__}.")
    if pixel_values.dim() != 4:
        raise ValueError(f"`{name}` must have shape (batch, {num_channels}, height, width), got a "
                         f"{pixel_values.dim()}-D tensor of shape {tuple(pixel_values.shape)}.")
    batch, channels, height, width = pixel_values.shape
    if batch == 0:
        raise ValueError(f"`{name}` is an empty batch (shape {tuple(pixel_values.shape)}); give at least one image.")
    if channels != num_channels:
        raise ValueError(f"`{name}` must have {num_channels} channels in dim 1 (batch, {num_channels}, height, width), "
                         f"got shape {tuple(pixel_values.shape)}.")
    if height < min_size or width < min_size:
        raise ValueError(f"`{name}` images must be at least {min_size}x{min_size} pixels (one patch), got "
                         f"{height}x{width}.")
    if not pixel_values.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor (use the image processor), got {pixel_values.dtype}.")
    # The value check branches on the data, which `torch.compile` / `torch.export` / ONNX export cannot trace (a
    # data-dependent guard): traced graphs skip it and keep only the shape and dtype checks above.
    if torch.compiler.is_compiling():
        return
    low, high = pixel_values.detach().aminmax()  # one reduction, no copy of the batch
    peak = torch.maximum(-low, high)
    if not torch.isfinite(peak):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    if peak > MAX_PIXEL_MAGNITUDE:
        raise ValueError(f"`{name}` holds values up to {peak.item():.3g}; expected normalised pixels (the image "
                         f"processor's output, a few units around 0; at most {MAX_PIXEL_MAGNITUDE:g}).")


def check_num_tokens(num_tokens, maximum: int) -> int:
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
        raise TypeError(f"`num_tokens` must be an int in [1, {maximum}], got {num_tokens!r}.")
    if not 1 <= num_tokens <= maximum:
        raise ValueError(f"`num_tokens` must be in [1, {maximum}] (16 tokens per score-grid cell at most), "
                         f"got {num_tokens}.")
    return num_tokens


class DartPatchProjection(nn.Conv2d):
    """The patch projection `Conv2d(C, D, P, stride=P)`: the model's input embedding (`get_input_embeddings`).

    A class of its own for two reasons:
    - It is named in `_no_split_modules`. accelerate's FSDP2 preparation shards the input embedding as a unit of its
      own unless it already is one; sharding it after the `DartEmbeddings` unit that holds it (whose parameters are
      then already sharded) failed. Named there, it is wrapped first, bottom-up.
    - Its weights are used only in its own `forward` (an FSDP unit gathers them in its pre-forward hook). Inference
      runs the stride-`P` convolution, so released checkpoints give bit-identical outputs; a CPU training step may
      take an equal matrix product instead (`cpu_tuning_dart.project_patch_strip`).
    """

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, height, width)` -> `(batch, hidden, height / P, width / P)`, as the convolution."""
        tokens = project_patch_strip(patches, self.weight, self.bias, self.kernel_size[0])
        return super().forward(patches) if tokens is None else tokens


class DartEmbeddings(nn.Module):
    """Pixels -> adaptive tokens with resampled positions, cls token inserted.

    Holds the scorer, the patch projection `Conv2d(C, D, P, stride=P)`, the cls token and the base position table
    `(1, grid * grid + 1, D)` (the cls row at `cls_index`: 0 for `cls_token_position="head"`, `(grid*grid + 1) // 2`
    for `"middle"`, as in the original checkpoints).
    """

    def __init__(self, config: DartConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.score_grid_size
        self.patch_size = config.patch_size
        self.num_cells = config.score_grid_size**2
        with _scorer_construction_dtype():  # a model built in bf16/fp16 (`from_config(dtype=...)`) keeps it float32
            self.scorer = DartScorer(config) if config.scorer == "learned" else None
        self.projection = DartPatchProjection(config.num_channels, config.hidden_size, config.patch_size,
                                              stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_cells + 1, config.hidden_size))
        self.cls_row = 0 if config.cls_token_position == "head" else (self.num_cells + 1) // 2
        self.geometry = DartTokenGeometryEmbedding(config.hidden_size) if config.token_geometry_embedding else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    # -- pieces
    def patch_position_table(self) -> torch.Tensor:
        """The base position table without the cls row: `(grid * grid, hidden_size)`."""
        table = self.position_embeddings[0]
        return torch.cat([table[: self.cls_row], table[self.cls_row + 1 :]], dim=0)

    def compute_scores(self, pixel_values: torch.Tensor, normalization: str | None = None,
                       return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """Score map `(batch, grid, grid)` (constant 1 for the uniform scorer); with `return_features=True` the pair
        `(score map, the scorer trunk's features (batch, channels, h, w) from the same pass)`, None for the uniform
        scorer."""
        normalization = normalization or self.config.score_normalization
        if self.scorer is None:
            ones = pixel_values.new_ones(pixel_values.shape[0], self.grid_size, self.grid_size)
            return (ones, None) if return_features else ones
        if not any(p.dtype in _HALF_DTYPES for p in self.scorer.parameters()) and pixel_values.dtype not in _HALF_DTYPES:
            return self.scorer(pixel_values, normalization, return_features=return_features)
        # the regions move by whole pixels when the scores move by a half-precision rounding step (and with them
        # every token's content), so scoring always runs in float32 (see `DartScorer._apply`); should the scorer's
        # weights have been made half precision by hand, they are upcast on the fly (gradients flow through the cast)
        upcast = {name: tensor.float() if tensor.is_floating_point() else tensor
                  for name, tensor in (*self.scorer.named_parameters(), *self.scorer.named_buffers())}
        return torch.func.functional_call(self.scorer, upcast, (pixel_values.float(), normalization),
                                          {"return_features": return_features})

    def project(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches side by side `(batch, channels, patch, num_tokens * patch)` -> tokens `(batch, num_tokens, hidden)`
        (or a whole image on the exact standard grid, as a ViT projects it); see `DartPatchProjection`."""
        return self.projection(patches).flatten(2).transpose(1, 2)

    def _exact_grid_stride(self, height: int, width: int, num_tokens: int) -> tuple[int, int] | None:
        """Pixel strides of the standard grid when uniform tokens land exactly on it, else None."""
        base = self.grid_size * self.patch_size
        if num_tokens != self.num_cells or height % base or width % base:
            return None
        return height // base, width // base

    def forward(
        self,
        pixel_values: torch.Tensor,
        num_tokens: int | None = None,
        score_map: torch.Tensor | None = None,
        score_normalization: str | None = None,
        return_scorer_features: bool = False,
    ) -> DartEmbeddingsOutput:
        """
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`): any size >= one patch.
            num_tokens (`int`, *optional*): number of adaptive tokens (defaults to `config.num_tokens`).
            score_map (`torch.Tensor` of shape `(batch, grid, grid)`, *optional*): use these scores instead of the
                scorer's (e.g. one score map shared by all frames of a clip).
            score_normalization (`str`, *optional*): overrides `config.score_normalization`.
            return_scorer_features (`bool`, *optional*, defaults to `False`): also return the learned scorer trunk's
                features from the pass that scored the image (`scorer_features`; None when `score_map` is given or
                the scorer is uniform).
        """
        config = self.config
        check_pixel_values(pixel_values, config.num_channels, self.patch_size)
        num_tokens = check_num_tokens(config.num_tokens if num_tokens is None else num_tokens, config.max_num_tokens())
        batch, _, height, width = pixel_values.shape
        grid, patch = self.grid_size, self.patch_size
        num_rows = max(1, round(math.sqrt(num_tokens)))

        uniform = score_map is None
        scorer_features = None
        if score_map is None and return_scorer_features:
            score_map, scorer_features = self.compute_scores(pixel_values, score_normalization, return_features=True)
        elif score_map is None:
            score_map = self.compute_scores(pixel_values, score_normalization)
        # The geometry (densities, cumulative sums, quantiles, edges) is computed in float64 and returned in float32:
        # a cut lies at `(level - cumulative mass) / cell mass`, so in float32 the rounding of the cumulative mass
        # (~1e-7) over a light cell (mass ~5e-4) moved the edges by ~1e-3 pixels, differently for every kernel order
        # (eager vs compiled, batch sizes). A few thousand numbers per image: no measurable cost.
        output_dtype = torch.promote_types(score_map.dtype, torch.float32)
        math_dtype = wide_dtype(score_map)
        score = score_map.reshape(batch, self.num_cells).to(math_dtype)

        # density, row marginal, row heights (base-grid pixels)
        pdf = score_density(score)
        marginal = pdf.view(batch, grid, grid).sum(dim=-1)
        marginal = marginal / (marginal.sum(dim=-1, keepdim=True) + ROW_MARGINAL_EPS)
        row_cut = piecewise_linear_quantiles(marginal, num_rows)  # (B, R+1), cell units
        row_heights = (row_cut[:, 1:] - row_cut[:, :-1]) * patch  # sums to grid * patch

        # resample the pdf and the base position grid into the token rows
        row_weights = row_resampling_weights(row_heights, float(patch), grid)  # (B, R, grid)
        resampled_pdf = torch.bmm(row_weights, pdf.view(batch, grid, grid)).reshape(batch, num_rows * grid)
        resampled_pdf = resampled_pdf / resampled_pdf.sum(dim=-1, keepdim=True)
        strip_cells = num_rows * grid
        strip_cut = piecewise_linear_quantiles(resampled_pdf, num_tokens)  # (B, N+1), cell units

        # pixel geometry: rows in input pixels, token edges along the strip of rows `width` pixels wide; from here on
        # in float32 (no cut is computed below: sampling and the position weights are not ill-conditioned)
        scale_y = height / (grid * patch)
        row_edges = torch.cat([row_heights.new_zeros(batch, 1), row_heights.cumsum(dim=-1)], dim=1) * scale_y
        token_edges = strip_cut * (width * num_rows / strip_cells)
        row_edges, token_edges, strip_cut, row_heights = (
            tensor.to(output_dtype) for tensor in (row_edges, token_edges, strip_cut, row_heights)
        )

        table = self.patch_position_table()
        stride = self._exact_grid_stride(height, width, num_tokens) if self.scorer is None and uniform else None
        if stride is not None:
            # constant scores on a multiple of the base grid: every sample point is an integer pixel, so take the
            # exact standard patch grid instead of interpolating (bit-identical to a plain ViT patch embedding)
            positions = table.unsqueeze(0).expand(batch, -1, -1)
            patches = pixel_values[:, :, :: stride[0], :: stride[1]]
        else:
            hidden = table.shape[-1]
            rows_table = torch.matmul(row_weights.to(table.dtype), table.view(grid, grid * hidden))
            rows_table = rows_table.view(batch, strip_cells, hidden)
            strip_weights = strip_resampling_weights(strip_cut, strip_cells).to(table.dtype)  # (B, N, L)
            positions = torch.bmm(strip_weights, rows_table)
            patches = sample_regions(
                pixel_values, row_edges[:, :-1], row_heights * scale_y, token_edges, patch
            )  # (B, C, P, N * P)
        tokens = self.project(patches.to(self.projection.weight.dtype))  # (B, N, D)

        cls_index = 0 if config.cls_token_position == "head" else num_tokens // 2
        cls = (self.cls_token + self.position_embeddings[:, self.cls_row : self.cls_row + 1]).expand(batch, -1, -1)
        sequence = tokens + positions.to(tokens.dtype)
        boxes = token_boxes(row_edges, token_edges, width)  # differentiable: the geometry embedding reads them
        if self.geometry is not None:
            sequence = sequence + self.geometry(boxes, height, width).to(tokens.dtype)
        embeddings = torch.cat([sequence[:, :cls_index], cls.to(tokens.dtype), sequence[:, cls_index:]], dim=1)
        embeddings = self.dropout(embeddings)
        regions = boxes.detach()
        return DartEmbeddingsOutput(
            embeddings=embeddings,
            patch_tokens=tokens,
            position_embeddings=positions,
            cls_index=cls_index,
            score_map=score_map,
            pdf=pdf.to(output_dtype),
            row_heights=row_heights,
            resampled_pdf=resampled_pdf.to(output_dtype),
            token_edges=token_edges,
            row_edges=row_edges,
            regions=regions,
            scorer_features=scorer_features,
        )
