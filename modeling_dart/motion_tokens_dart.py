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
"""The motion tokeniser of DART video models (`DartVideoConfig(video_tokenizer="motion")`): one token budget for the
whole clip, placed where the frames change.

The scores are the differences of a frozen CNN trunk's features between consecutive frames, gated by the clip's mean
feature and standardised per clip. The frames are stacked into one tall image (frame `t` on rows `t * H .. t * H + H -
1`); token rows are cut from the row marginal of the clip's score map and tokens from the density along the rows, with
the same quantile and area-overlap functions as the image tokeniser (`partition_dart`). The spatial position table
(the same for every frame) and the temporal one (one vector per frame) are resampled with the tokens. This is the
authors' `DynamicVideoPatchEmbed`, generalised to any frame count and any frame size divisible by the patch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_dart import MAX_TOKENS_PER_CELL, DartVideoConfig
from .embeddings_dart import ROW_MARGINAL_EPS, DartPatchProjection, check_pixel_values
from .partition_dart import (
    piecewise_linear_quantiles,
    row_resampling_weights,
    sample_regions,
    score_density,
    strip_resampling_weights,
    token_boxes,
)
from .scorer_dart import _HALF_DTYPES, DartScorer, _scorer_construction_dtype, resize_to_grid, standardize
from .trunks_dart import wide_dtype

# the squashing of the standardised motion strength: sigmoid(MOTION_SLOPE * (z - MOTION_SHIFT)), as the original
MOTION_SLOPE = 1.5
MOTION_SHIFT = 1.0


def motion_num_rows(num_tokens: int, frames: int, grid_rows: int, grid_cols: int, rule: str) -> int:
    """Token rows of a clip of `frames` frames on a `grid_rows x grid_cols` patch grid.

    `"original"`: `int(sqrt(num_tokens / frames) * frames)` in floating point, truncated (square frames assumed).
    `"aspect"`: `round(sqrt(num_tokens * frames * grid_rows / grid_cols))`, about square tokens whatever the frames'
    aspect ratio. Either is at least 1 and at most `num_tokens`.
    """
    if rule == "original":
        rows = int(math.sqrt(num_tokens / frames) * frames)
    else:
        rows = round(math.sqrt(num_tokens * frames * grid_rows / grid_cols))
    return min(max(rows, 1), num_tokens)


def check_clip(pixel_values: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """The clip's patch grid `(height / patch_size, width / patch_size)`; a `ValueError` for a single frame (no
    motion) or frame sides that the patch size does not divide. `pixel_values` is `(batch, frames, C, H, W)`."""
    frames, height, width = pixel_values.shape[1], pixel_values.shape[-2], pixel_values.shape[-1]
    if frames < 2:
        raise ValueError(f"The motion tokeniser needs at least 2 frames per clip (it scores the change between "
                         f"consecutive frames), got {frames}.")
    if height % patch_size or width % patch_size:
        raise ValueError(f"The motion tokeniser needs frame sides divisible by the patch size ({patch_size}), got "
                         f"{height}x{width}: crop or resize the frames (e.g. to {height // patch_size * patch_size}x"
                         f"{width // patch_size * patch_size}).")
    return height // patch_size, width // patch_size


def check_clip_num_tokens(num_tokens, frames: int, grid_rows: int, grid_cols: int) -> int:
    """`num_tokens` as an int in `[1, 16 * frames * grid_rows * grid_cols]`, else a `TypeError` / `ValueError`."""
    maximum = MAX_TOKENS_PER_CELL * frames * grid_rows * grid_cols
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
        raise TypeError(f"`num_tokens` must be an int in [1, {maximum}], got {num_tokens!r}.")
    if not 1 <= num_tokens <= maximum:
        raise ValueError(f"`num_tokens` is the budget of the whole clip and must be in [1, {maximum}] (at most "
                         f"{MAX_TOKENS_PER_CELL} per patch cell of its {frames} frames of {grid_rows}x{grid_cols} "
                         f"cells), got {num_tokens}.")
    return num_tokens


class DartMotionScorer(DartScorer):
    """Motion scores of a clip: `(batch, frames, C, H, W)` -> `(batch, frames, grid_rows, grid_cols)`.

    With `F_t` the frozen trunk's features of frame `t` (`(C, h, w)`):
    - `context = sigmoid(context_proj(mean of F_t over frames 1..T-1 and all positions))` gates the `C` channels
      (the original leaves frame 0 out of the mean);
    - the strength of frame `t >= 1` at a position is `sum_c relu(motion_proj(F_t - F_{t-1}))_c * context_c`;
    - the strength map is resized to the patch grid when the trunk's grid differs (area average or bilinear), then
      standardised over each clip (`"image"`; `"batch"` over the whole batch) and squashed by
      `sigmoid(1.5 * (z - 1))`;
    - frame 0 gets `config.motion_first_frame_score` everywhere, or frame 1's scores when it is `None`.

    The trunk runs as the image scorer's (frozen: no gradients, BatchNorm in eval mode, float32 under half precision).
    """

    def __init__(self, config: DartVideoConfig):
        nn.Module.__init__(self)
        self.version = "motion"
        channels = self._build_trunk(config)
        self.motion_proj = nn.Linear(channels, channels)
        self.context_proj = nn.Linear(channels, channels)
        self.first_frame_score = config.motion_first_frame_score
        if self.freeze_trunk:
            self.features.requires_grad_(False)

    def frame_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Trunk features of every frame: `(batch, frames, C, H, W)` -> `(batch, frames, C', h, w)`."""
        batch, frames = pixel_values.shape[:2]
        features = self.extract_features(pixel_values.flatten(0, 1))
        return features.reshape(batch, frames, *features.shape[1:])

    def motion_strength(self, features: torch.Tensor) -> torch.Tensor:
        """`(batch, frames, C, h, w)` features -> `(batch, frames - 1, h, w)` raw strengths of frames 1..T-1."""
        context = torch.sigmoid(self.context_proj(features[:, 1:].mean(dim=(1, 3, 4))))  # (B, C)
        change = (features[:, 1:] - features[:, :-1]).permute(0, 1, 3, 4, 2)  # (B, T-1, h, w, C)
        return (F.relu(self.motion_proj(change)) * context[:, None, None, None]).sum(dim=-1)

    def forward(self, pixel_values: torch.Tensor, grid: tuple[int, int], normalization: str = "image",
                features: torch.Tensor | None = None) -> torch.Tensor:
        """Scores `(batch, frames, *grid)`; `features` (the output of `frame_features`) skips the trunk."""
        if features is None:
            features = self.frame_features(pixel_values)
        strength = self.motion_strength(features)
        if tuple(strength.shape[-2:]) != tuple(grid):
            strength = resize_to_grid(strength, grid)
        scores = torch.sigmoid(MOTION_SLOPE * (standardize(strength.float(), normalization) - MOTION_SHIFT))
        if self.first_frame_score is None:
            first = scores[:, :1]
        else:
            first = torch.full_like(scores[:, :1], float(self.first_frame_score))
        return torch.cat([first, scores], dim=1)


@dataclass
class DartMotionEmbeddingsOutput:
    """What the motion tokeniser computed for a clip batch (N tokens, R token rows, T frames, patch grid gh x gw).

    Attributes:
        embeddings (`(batch, 1 + N, hidden_size)`): cls token (`cls_token + position_embeddings[0]`) first, then the
            tokens plus their resampled spatial and temporal positions: the backbone's input.
        patch_tokens (`(batch, N, hidden_size)`): projected patches, before positions.
        position_embeddings (`(batch, N, hidden_size)`): resampled spatial positions.
        temporal_embeddings (`(batch, N, hidden_size)`): resampled temporal positions.
        score_map (`(batch, T, gh, gw)`): the motion scores (frame 0 as `config.motion_first_frame_score` says).
        pdf (`(batch, T * gh * gw)`): the scores normalised to sum 1 over the clip.
        row_heights (`(batch, R)`): token-row heights in pixels of the tall image (they sum to `T * H`).
        resampled_pdf (`(batch, R * gw)`): the pdf resampled into the token rows, summing to 1.
        token_edges (`(batch, N + 1)`): token boundaries along the strip of token rows, in strip pixels (row `i`
            occupies `[i * W, (i + 1) * W)`).
        row_edges (`(batch, R + 1)`): token-row boundaries in pixels of the tall image.
        regions (`(batch, N, 4)`): each token's source box `(x0, y0, x1, y1)` in pixels of the tall image (its widest
            piece when it straddles two rows; `y // H` is the frame).
        token_frames (`(batch, N)`): the frame of each token's box centre.
    """

    embeddings: torch.Tensor
    patch_tokens: torch.Tensor
    position_embeddings: torch.Tensor
    temporal_embeddings: torch.Tensor
    score_map: torch.Tensor
    pdf: torch.Tensor
    row_heights: torch.Tensor
    resampled_pdf: torch.Tensor
    token_edges: torch.Tensor
    row_edges: torch.Tensor
    regions: torch.Tensor
    token_frames: torch.Tensor


class DartMotionEmbeddings(nn.Module):
    """Clip -> motion-placed tokens with resampled spatial and temporal positions, cls token first.

    Holds the motion scorer (`None` for `scorer="uniform"`: constant scores, tokens spread evenly over the clip), the
    patch projection `Conv2d(C, D, P, stride=P)`, the cls token and the spatial position table `(1, 1 + g * g, D)`
    (cls row first, g = `score_grid_size`). The temporal table belongs to the model and is passed in.
    """

    def __init__(self, config: DartVideoConfig):
        super().__init__()
        self.config = config
        self.grid_size = config.score_grid_size
        self.patch_size = config.patch_size
        with _scorer_construction_dtype():
            self.scorer = DartMotionScorer(config) if config.scorer == "learned" else None
        self.projection = DartPatchProjection(config.num_channels, config.hidden_size, config.patch_size,
                                              stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def spatial_table(self, grid_rows: int, grid_cols: int) -> torch.Tensor:
        """The spatial position table on the clip's patch grid: `(grid_rows, grid_cols * hidden_size)`.

        The base table covers a `g x g` grid; another grid takes area-overlap averages of it along each axis (the
        image tokeniser's convention: the base grid spans the whole frame)."""
        grid, hidden = self.grid_size, self.position_embeddings.shape[-1]
        table = self.position_embeddings[0, 1:].view(grid, grid, hidden)
        if (grid_rows, grid_cols) != (grid, grid):
            one = table.new_ones(1, 1)
            rows = row_resampling_weights(one.expand(1, grid_rows) * (grid / grid_rows), 1.0, grid)[0]
            cols = row_resampling_weights(one.expand(1, grid_cols) * (grid / grid_cols), 1.0, grid)[0]
            table = torch.einsum("ij,jkd,lk->ild", rows, table, cols)
        return table.reshape(grid_rows, grid_cols * hidden)

    def compute_scores(self, pixel_values: torch.Tensor, grid: tuple[int, int],
                       normalization: str | None = None) -> torch.Tensor:
        """Score map `(batch, frames, *grid)` (constant 1 for the uniform scorer)."""
        normalization = normalization or self.config.score_normalization
        batch, frames = pixel_values.shape[:2]
        if self.scorer is None:
            return pixel_values.new_ones(batch, frames, *grid)
        if pixel_values.dtype in _HALF_DTYPES:  # the scorer stays float32 (see `DartScorer._apply`)
            pixel_values = pixel_values.float()
        return self.scorer(pixel_values, grid, normalization)

    def forward(
        self,
        pixel_values: torch.Tensor,
        temporal_table: torch.Tensor,
        num_tokens: int | None = None,
        score_normalization: str | None = None,
        score_map: torch.Tensor | None = None,
    ) -> DartMotionEmbeddingsOutput:
        """
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, frames, channels, height, width)`): at least 2 frames,
                sides divisible by `patch_size`.
            temporal_table (`torch.Tensor` of shape `(1, frames, hidden_size)`): one temporal position per frame.
            num_tokens (`int`, *optional*): the clip's token budget (defaults to `config.num_tokens`).
            score_normalization (`str`, *optional*): overrides `config.score_normalization`.
            score_map (`torch.Tensor` of shape `(batch, frames, height / patch_size, width / patch_size)`, *optional*):
                use these scores instead of the scorer's (e.g. scores computed once for several budgets).
        """
        config = self.config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5:
            raise ValueError(f"`pixel_values` must be a tensor of shape (batch, frames, {config.num_channels}, height, "
                             f"width), got {getattr(pixel_values, 'shape', type(pixel_values).__name__)}.")
        check_pixel_values(pixel_values.flatten(0, 1), config.num_channels, self.patch_size)
        batch, frames, _, height, width = pixel_values.shape
        grid_rows, grid_cols = check_clip(pixel_values, self.patch_size)
        num_tokens = check_clip_num_tokens(config.num_tokens if num_tokens is None else num_tokens, frames,
                                           grid_rows, grid_cols)
        num_rows = motion_num_rows(num_tokens, frames, grid_rows, grid_cols, config.motion_row_rule)
        source_rows, cell_height, cell_width = frames * grid_rows, height / grid_rows, width / grid_cols

        if score_map is None:
            score_map = self.compute_scores(pixel_values, (grid_rows, grid_cols), score_normalization)
        elif tuple(score_map.shape) != (batch, frames, grid_rows, grid_cols):
            raise ValueError(f"`score_map` must have shape {(batch, frames, grid_rows, grid_cols)} (batch, frames, "
                             f"patch grid), got {tuple(score_map.shape)}.")
        # the geometry in float64, returned in float32, as the image tokeniser (see `DartEmbeddings.forward`)
        output_dtype = torch.promote_types(score_map.dtype, torch.float32)
        score = score_map.reshape(batch, source_rows * grid_cols).to(wide_dtype(score_map))
        pdf = score_density(score)
        marginal = pdf.view(batch, source_rows, grid_cols).sum(dim=-1)
        marginal = marginal / (marginal.sum(dim=-1, keepdim=True) + ROW_MARGINAL_EPS)
        row_cut = piecewise_linear_quantiles(marginal, num_rows)  # (B, R+1), in source rows of the tall grid
        row_heights = (row_cut[:, 1:] - row_cut[:, :-1]) * cell_height  # tall-image pixels, summing to T * H
        row_weights = row_resampling_weights(row_heights, cell_height, source_rows)  # (B, R, T * gh)
        resampled_pdf = torch.bmm(row_weights, pdf.view(batch, source_rows, grid_cols))
        resampled_pdf = resampled_pdf.reshape(batch, num_rows * grid_cols)
        resampled_pdf = resampled_pdf / resampled_pdf.sum(dim=-1, keepdim=True)
        strip_cells = num_rows * grid_cols
        strip_cut = piecewise_linear_quantiles(resampled_pdf, num_tokens)  # (B, N+1), in cells of the strip
        row_edges = torch.cat([row_heights.new_zeros(batch, 1), row_heights.cumsum(dim=-1)], dim=1)
        token_edges = strip_cut * cell_width

        # positions: the spatial table repeats in every frame and the temporal one is constant over a frame, so the
        # row weights are summed over frames (spatial) or over a frame's rows (temporal) before they are applied
        hidden = self.position_embeddings.shape[-1]
        table_dtype = self.position_embeddings.dtype
        frame_weights = row_weights.view(batch, num_rows, frames, grid_rows)
        spatial_rows = torch.matmul(frame_weights.sum(dim=2).to(table_dtype), self.spatial_table(grid_rows, grid_cols))
        temporal_rows = torch.matmul(frame_weights.sum(dim=3).to(table_dtype), temporal_table[0].to(table_dtype))
        temporal_rows = temporal_rows.unsqueeze(2).expand(batch, num_rows, grid_cols, hidden)
        strip_weights = strip_resampling_weights(strip_cut, strip_cells).to(table_dtype)  # (B, N, R * gw)
        positions = torch.bmm(strip_weights, spatial_rows.reshape(batch, strip_cells, hidden))
        temporal = torch.bmm(strip_weights, temporal_rows.reshape(batch, strip_cells, hidden))

        row_edges, token_edges, row_heights = (tensor.to(output_dtype) for tensor in (row_edges, token_edges,
                                                                                        row_heights))
        tall = pixel_values.transpose(1, 2).reshape(batch, pixel_values.shape[2], frames * height, width)
        patches = sample_regions(tall, row_edges[:, :-1], row_heights, token_edges, self.patch_size)
        tokens = self.projection(patches.to(self.projection.weight.dtype)).flatten(2).transpose(1, 2)  # (B, N, D)

        cls = (self.cls_token + self.position_embeddings[:, :1]).expand(batch, -1, -1)
        sequence = tokens + positions.to(tokens.dtype) + temporal.to(tokens.dtype)
        embeddings = self.dropout(torch.cat([cls.to(tokens.dtype), sequence], dim=1))
        regions = token_boxes(row_edges, token_edges, width).detach()
        centre = (regions[..., 1] + regions[..., 3]) / 2
        token_frames = torch.div(centre, height, rounding_mode="floor").clamp(0, frames - 1).to(torch.long)
        return DartMotionEmbeddingsOutput(
            embeddings=embeddings,
            patch_tokens=tokens,
            position_embeddings=positions,
            temporal_embeddings=temporal,
            score_map=score_map,
            pdf=pdf.to(output_dtype),
            row_heights=row_heights,
            resampled_pdf=resampled_pdf.to(output_dtype),
            token_edges=token_edges,
            row_edges=row_edges,
            regions=regions,
            token_frames=token_frames,
        )


__all__ = ["DartMotionEmbeddings", "DartMotionEmbeddingsOutput", "DartMotionScorer", "motion_num_rows"]
