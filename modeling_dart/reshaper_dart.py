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
"""The DART image reshaper: pixels -> a warped image whose rows and columns give more pixels to the parts of the input
with high scores, for backbones that take an image (DART's second form, the original's
`DynamicAdaptiveImageReshaper`, "DAIR"); and the maps between warped and input coordinates.

The warp is separable. The score map's row marginal is cut into `R` parts of equal mass and its column marginal into
`K` parts (`partition_dart.piecewise_linear_quantiles`, the token form's quantile). Input row band `i` spans
`[row_edges[i], row_edges[i + 1])` and input column band `j` spans `[col_edges[j], col_edges[j + 1])`, in input
pixels. Warped pixel `(i * P + l, j * P + k)` (`P = patch_size`) reads the input at

    y = row_edges[i] + (row_edges[i + 1] - row_edges[i]) * l / P,
    x = col_edges[j] + (col_edges[j + 1] - col_edges[j]) * k / P,

in pixel-index coordinates (pixel `n` at coordinate `n`), by linear interpolation (`partition_dart.sample_rows`,
the token form's row sampling, once for the rows and, on the transposed row bands, once for the columns).

Clean defaults for new models: per-image score standardisation, the first column edge at 0, every scale exact, any
input size (sides multiples of `patch_size * downscale_factor`, or any size with `output_size`). The original's
behaviour, which the released `darmt-L6` needs, is behind options that say so: `score_normalization="batch"`,
`first_edge_at_one=True`, `edge_scale_from_first_image=True` and `column_sampling="strip"`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_dart import DartConfig
from .embeddings_dart import ROW_MARGINAL_EPS, check_pixel_values
from .partition_dart import (
    piecewise_linear_quantiles,
    row_resampling_weights,
    sample_rows,
    sample_strip,
    score_density,
)
from .scorer_dart import _HALF_DTYPES, DartScorer, _scorer_construction_dtype
from .trunks_dart import wide_dtype

SCORERS = ("learned", "uniform")
SCORE_NORMALIZATIONS = ("image", "batch")
COLUMN_SAMPLINGS = ("band", "strip")
UNWARP_MODES = ("bilinear", "nearest")


# --------------------------------------------------------------------------------------------------- geometry
def marginal_quantile_cuts(pdf: torch.Tensor, num_rows: int, num_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the row marginal of a density into `num_rows` parts of equal mass and its column marginal into `num_cols`.

    Each marginal is normalised as `m / (m.sum() + 1e-8)` and cut by `piecewise_linear_quantiles`.

    Args:
        pdf (`torch.Tensor` of shape `(batch, grid_rows, grid_cols)`): non-negative, summing to ~1 per image.
        num_rows, num_cols (`int`): the parts.

    Returns:
        `(row_cuts, col_cuts)` of shapes `(batch, num_rows + 1)` and `(batch, num_cols + 1)`, in score-cell units:
        the first cut is 0 and the last the number of cells.
    """
    if not isinstance(pdf, torch.Tensor) or pdf.dim() != 3:
        shape = tuple(pdf.shape) if isinstance(pdf, torch.Tensor) else type(pdf).__name__
        raise ValueError(f"`pdf` must be a tensor of shape (batch, grid_rows, grid_cols), got {shape}.")
    _check_positive_int(num_rows, "num_rows")
    _check_positive_int(num_cols, "num_cols")
    rows = pdf.sum(dim=-1)
    cols = pdf.sum(dim=-2)
    rows = rows / (rows.sum(dim=-1, keepdim=True) + ROW_MARGINAL_EPS)
    cols = cols / (cols.sum(dim=-1, keepdim=True) + ROW_MARGINAL_EPS)
    return piecewise_linear_quantiles(rows, num_rows), piecewise_linear_quantiles(cols, num_cols)


def uniform_edges(batch: int, num_parts: int, size: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The edges `n * size / num_parts`, `n = 0 .. num_parts`, for every image: `(batch, num_parts + 1)` (exact
    integers when `num_parts` divides `size`)."""
    for value, name in ((batch, "batch"), (num_parts, "num_parts"), (size, "size")):
        _check_positive_int(value, name)
    steps = torch.arange(num_parts + 1, dtype=dtype, device=device)
    return (steps * size / num_parts).expand(batch, -1)


def strip_edges(
    col_edges: torch.Tensor,
    num_rows: int,
    width: int,
    output_width: int,
    first_edge_at_one: bool = False,
    scale_from_first_image: bool = False,
) -> torch.Tensor:
    """Edges of the `num_rows * num_cols` warped cells along the strip of row bands laid end to end.

    Band `i` occupies `[i * width, (i + 1) * width)` of the strip and cell `n = i * num_cols + j` spans
    `[edges[n], edges[n + 1])`: `i * width + col_edges[j]` to `i * width + col_edges[j + 1]` (the form of the
    original's `new_edges`).

    Args:
        col_edges (`torch.Tensor` of shape `(batch, num_cols + 1)`): column edges in input pixels, from 0 to `width`.
        num_rows (`int`): number of row bands.
        width (`int`): input width.
        output_width (`int`): warped width (`num_cols * patch_size`).
        first_edge_at_one (`bool`): the original's first edge: one warped pixel (`width / output_width` input
            pixels) instead of 0.
        scale_from_first_image (`bool`): the original's scale: the edges are taken in warped pixels and multiplied
            by `width * num_rows` over the last edge of the batch's first image (the original reads that edge as a
            Python number; here it stays a tensor, with the same result).

    Returns:
        `torch.Tensor` of shape `(batch, num_rows * num_cols + 1)`, in strip pixels.
    """
    batch = col_edges.shape[0]
    offsets = torch.arange(num_rows, dtype=col_edges.dtype, device=col_edges.device) * width
    inner = (col_edges[:, None, 1:] + offsets[None, :, None]).reshape(batch, -1)
    unit = width / output_width  # one warped pixel, in input pixels
    first = col_edges.new_full((batch, 1), unit) if first_edge_at_one else col_edges[:, :1]
    edges = torch.cat([first, inner], dim=1)
    if scale_from_first_image:
        in_warped_pixels = edges / unit
        # a 0-d tensor, not the original's Python number (a host read, which breaks compiled and exported graphs),
        # with the same value: one float64 division (`number / tensor` would be a reciprocal and a product), rounded
        # to the edges' dtype as a Python scale would be
        last = in_warped_pixels[0, -1].to(torch.float64)
        scale = torch.full_like(last, width * num_rows) / last
        edges = in_warped_pixels * scale.to(in_warped_pixels.dtype)
    return edges


def warp_pixels(
    pixel_values: torch.Tensor,
    row_edges: torch.Tensor,
    edges: torch.Tensor,
    num_cols: int,
    patch_size: int,
    column_sampling: str = "band",
) -> torch.Tensor:
    """Resample the input into the warped image: every cell to `patch_size x patch_size` pixels, cells in place.

    Row band `i` is sampled to `patch_size` rows (`partition_dart.sample_rows`: `y = row_edges[i] + height * l / P`,
    clamped to the image), giving a strip of the row bands side by side. Cell `n` then samples the strip at
    `x = edges[n] + (edges[n + 1] - edges[n]) * k / P`:

    - `column_sampling="band"`: inside its own band, `x` clamped to the band (each band is an image of its own, the
      exact separable warp; `sample_rows` on the transposed bands);
    - `column_sampling="strip"`: along the whole strip with zeros past its ends (`partition_dart.sample_strip`), as
      the original: a sample past a band's last column mixes in the next band's first column.

    Sampling runs in at least float32.

    Args:
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`).
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`): row edges in input pixels.
        edges (`torch.Tensor` of shape `(batch, num_rows * num_cols + 1)`): cell edges along the strip, in strip
            pixels (`strip_edges`).
        num_cols (`int`): cells per row band.
        patch_size (`int`): side of a warped cell in pixels.
        column_sampling (`str`): `"band"` or `"strip"`.

    Returns:
        `torch.Tensor` of shape `(batch, channels, num_rows * patch_size, num_cols * patch_size)`, in the dtype of
        `pixel_values`.
    """
    _check_choice(column_sampling, COLUMN_SAMPLINGS, "column_sampling")
    _check_positive_int(num_cols, "num_cols")
    _check_positive_int(patch_size, "patch_size")
    _check_edges(row_edges, "row_edges")
    _check_edges(edges, "edges")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be a tensor of shape (batch, channels, height, width), got {shape}.")
    batch = pixel_values.shape[0]
    if row_edges.shape[0] != batch or edges.shape != (batch, (row_edges.shape[1] - 1) * num_cols + 1):
        raise ValueError(f"The warp does not fit `pixel_values` of shape {tuple(pixel_values.shape)}: row_edges "
                         f"{tuple(row_edges.shape)} and edges {tuple(edges.shape)} must be ({batch}, num_rows + 1) and "
                         f"({batch}, num_rows * {num_cols} + 1).")
    dtype = torch.promote_types(pixel_values.dtype, torch.float32)
    pixels = pixel_values.to(dtype)
    batch, channels, _, width = pixels.shape
    num_rows, patch = row_edges.shape[1] - 1, patch_size
    strip = sample_rows(pixels, row_edges[:, :-1], row_edges[:, 1:] - row_edges[:, :-1], patch)  # (B, C, P, R * W)
    if column_sampling == "strip":
        cells = sample_strip(strip, edges, patch)  # (B, C, P rows, R * K * P columns)
        warped = cells.view(batch, channels, patch, num_rows, num_cols, patch).permute(0, 1, 3, 2, 4, 5)
    else:
        # band i, transposed: its input columns become rows, so that `sample_rows` samples the columns
        bands = strip.view(batch, channels, patch, num_rows, width).permute(0, 3, 1, 4, 2)
        bands = bands.reshape(batch * num_rows, channels, width, patch)
        offsets = torch.arange(num_rows, dtype=edges.dtype, device=edges.device).view(1, -1, 1) * width
        starts = edges[:, :-1].reshape(batch, num_rows, num_cols) - offsets
        widths = (edges[:, 1:] - edges[:, :-1]).reshape(batch, num_rows, num_cols)
        cells = sample_rows(bands, starts.reshape(-1, num_cols), widths.reshape(-1, num_cols), patch)
        # (B * R, C, P samples k, K * P band rows l) -> (B, C, R, l, K, k)
        warped = cells.view(batch, num_rows, channels, patch, num_cols, patch).permute(0, 2, 1, 5, 4, 3)
    warped = warped.reshape(batch, channels, num_rows * patch, num_cols * patch)
    return warped.to(pixel_values.dtype)


# ----------------------------------------------------------------------------------------- coordinate maps
def _tracing() -> bool:
    # value checks branch on the data, which `torch.compile` / `torch.export` / tracing cannot follow: traced graphs
    # keep only the shape, dtype and argument checks
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _check_edges(edges, name: str, increasing: bool = False) -> None:
    if not isinstance(edges, torch.Tensor) or edges.dim() != 2 or edges.shape[1] < 2:
        shape = tuple(edges.shape) if isinstance(edges, torch.Tensor) else type(edges).__name__
        raise ValueError(f"`{name}` must be a tensor of shape (batch, num_cells + 1), got {shape}.")
    if increasing and not _tracing() and (not torch.isfinite(edges).all() or (edges[:, 1:] < edges[:, :-1]).any()):
        raise ValueError(f"`{name}` must hold finite edges that never decrease along dim 1 (the inverse map needs "
                         f"them ordered), got {edges[0].tolist()[:8]} for the first image.")


def _check_positions(positions, edges: torch.Tensor) -> None:
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[0] != edges.shape[0]:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"`positions` must be a tensor of shape (batch, num_positions) with the batch of `edges` "
                         f"({edges.shape[0]}), got {shape}.")


def warped_to_input(positions: torch.Tensor, edges: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Along one axis, the input coordinate that a warped coordinate reads.

    Warped cell `i` covers `[i * P, (i + 1) * P)` and maps linearly onto `[edges[i], edges[i + 1])`:
    `y = edges[i] + (edges[i + 1] - edges[i]) * (v / P - i)`, with `i = floor(v / P)` clamped to the cells (so the
    map is continuous, and positions outside `[0, num_cells * P]` extend the first or last cell linearly).

    Args:
        positions (`torch.Tensor` of shape `(batch, num_positions)`): warped coordinates (pixel `n` at `n`).
        edges (`torch.Tensor` of shape `(batch, num_cells + 1)`): the cells' edges in input pixels.
        patch_size (`int`): side of a warped cell.

    Returns:
        `torch.Tensor` of shape `(batch, num_positions)`: input coordinates.
    """
    _check_edges(edges, "edges")
    _check_positions(positions, edges)
    _check_positive_int(patch_size, "patch_size")
    num_cells = edges.shape[1] - 1
    scaled = positions / patch_size
    cell = scaled.floor().clamp(0, num_cells - 1)
    index = cell.to(torch.long)
    start, end = edges.gather(1, index), edges.gather(1, index + 1)
    return start + (end - start) * (scaled - cell)


def input_to_warped(positions: torch.Tensor, edges: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Along one axis, the warped coordinate of an input coordinate: the inverse of `warped_to_input`.

    The cell `i` with `edges[i] <= y < edges[i + 1]` (cells of zero size are skipped; the first or last cell
    outside the edges) gives `v = P * (i + (y - edges[i]) / (edges[i + 1] - edges[i]))`.

    Args:
        positions (`torch.Tensor` of shape `(batch, num_positions)`): input coordinates (pixel `n` at `n`).
        edges (`torch.Tensor` of shape `(batch, num_cells + 1)`): increasing, in input pixels.
        patch_size (`int`): side of a warped cell.

    Returns:
        `torch.Tensor` of shape `(batch, num_positions)`: warped coordinates.
    """
    _check_edges(edges, "edges", increasing=True)
    _check_positions(positions, edges)
    _check_positive_int(patch_size, "patch_size")
    # the cell is the number of inner edges at or before the position (counted: ONNX has no searchsorted)
    index = (edges[:, None, 1:-1] <= positions.unsqueeze(-1)).sum(dim=-1)
    start, end = edges.gather(1, index), edges.gather(1, index + 1)
    size = end - start
    fraction = torch.where(size > 0, (positions - start) / torch.where(size > 0, size, torch.ones_like(size)), 0.0)
    return patch_size * (index.to(positions.dtype) + fraction)


def warped_pixel_sources(
    row_edges: torch.Tensor, col_edges: torch.Tensor, patch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every warped pixel, the input coordinate it reads (`warped_to_input` at the pixel indices).

    The map is separable: warped pixel `(v, u)` reads input `(y[:, v], x[:, u])`.

    Args:
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`), col_edges (`(batch, num_cols + 1)`): the warp,
            in input pixels.
        patch_size (`int`).

    Returns:
        `(y, x)` of shapes `(batch, num_rows * patch_size)` and `(batch, num_cols * patch_size)`.
    """
    _check_edges(row_edges, "row_edges")
    _check_edges(col_edges, "col_edges")

    def axis(edges):
        steps = torch.arange((edges.shape[1] - 1) * patch_size, dtype=edges.dtype, device=edges.device)
        return warped_to_input(steps.expand(edges.shape[0], -1), edges, patch_size)

    return axis(row_edges), axis(col_edges)


def input_pixel_targets(
    row_edges: torch.Tensor, col_edges: torch.Tensor, patch_size: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every input pixel, its warped coordinate (`input_to_warped` at the pixel indices).

    The map is separable: input pixel `(y, x)` lands at warped `(v[:, y], u[:, x])`.

    Args:
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`), col_edges (`(batch, num_cols + 1)`): the warp,
            in input pixels.
        patch_size (`int`).
        height, width (`int`): the input size.

    Returns:
        `(v, u)` of shapes `(batch, height)` and `(batch, width)`.
    """
    _check_edges(row_edges, "row_edges")
    _check_edges(col_edges, "col_edges")

    def axis(edges, size):
        steps = torch.arange(size, dtype=edges.dtype, device=edges.device)
        return input_to_warped(steps.expand(edges.shape[0], -1), edges, patch_size)

    return axis(row_edges, height), axis(col_edges, width)


def map_coordinates(positions: torch.Tensor, warped_size: int, map_size: int) -> torch.Tensor:
    """Warped-pixel coordinates -> pixel-index coordinates of a map of `map_size` pixels covering the same warped
    image of `warped_size` pixels (a decode head's logits at a fraction of the warped size, or upsampled).

    Pixel centres align, as in `F.interpolate(..., align_corners=False)`: `m = (v + 0.5) * map_size / warped_size -
    0.5`. At `map_size == warped_size` the coordinates pass through unchanged.

    Args:
        positions (`torch.Tensor` of any shape): warped coordinates (warped pixel `n` at `n`).
        warped_size (`int`), map_size (`int`): sides, in pixels, along the axis.

    Returns:
        `torch.Tensor` of the shape of `positions`.
    """
    _check_positive_int(warped_size, "warped_size")
    _check_positive_int(map_size, "map_size")
    if map_size == warped_size:
        return positions
    return (positions + 0.5) * (map_size / warped_size) - 0.5


def sample_separable(maps: torch.Tensor, y: torch.Tensor, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Read `maps` on the separable grid `(y[:, i], x[:, j])`, batched (no loop over images or channels).

    Coordinates are pixel indices of `maps` (pixel `n` at `n`), clamped to the map (`grid_sample`'s
    `padding_mode="border"` with `align_corners=True`). `"bilinear"` interpolates linearly along each axis, in at
    least float32 (half-precision weights are only good to about 1e-3), and returns the dtype of `maps`; it is
    differentiable with respect to `maps` and to the coordinates. `"nearest"` takes the pixel at `floor(c + 0.5)` and
    keeps any dtype (labels).

    Args:
        maps (`torch.Tensor` of shape `(batch, channels, map_height, map_width)`).
        y (`torch.Tensor` of shape `(batch, out_height)`), x (`(batch, out_width)`): coordinates in map pixels.
        mode (`str`): `"bilinear"` or `"nearest"`.

    Returns:
        `torch.Tensor` of shape `(batch, channels, out_height, out_width)`.
    """
    if mode not in UNWARP_MODES:
        raise ValueError(f"`mode` must be one of {UNWARP_MODES}, got {mode!r}.")
    batch, channels, map_height, map_width = maps.shape
    if mode == "nearest":
        rows = (y.detach() + 0.5).floor().clamp(0, map_height - 1).to(torch.long)
        cols = (x.detach() + 0.5).floor().clamp(0, map_width - 1).to(torch.long)
        picked = maps.gather(2, rows.view(batch, 1, -1, 1).expand(batch, channels, -1, map_width))
        return picked.gather(3, cols.view(batch, 1, 1, -1).expand(batch, channels, picked.shape[2], -1))
    # one fused `grid_sample` over the separable grid, cheaper on CPU than gathering and blending each axis in turn
    # (benchmarks/README.md, "Inverse warp vs a UperNet decode head"); the coordinates, normalised to [-1, 1] in the
    # compute dtype, move by about `size * 6e-8` pixels in float32
    compute = torch.promote_types(maps.dtype, torch.float32)
    out_height, out_width = y.shape[1], x.shape[1]
    grid_x = (x.to(compute) * (2.0 / max(map_width - 1, 1)) - 1.0).view(batch, 1, out_width)
    grid_y = (y.to(compute) * (2.0 / max(map_height - 1, 1)) - 1.0).view(batch, out_height, 1)
    grid = torch.stack([grid_x.expand(batch, out_height, out_width), grid_y.expand(batch, out_height, out_width)],
                       dim=-1)
    sampled = F.grid_sample(maps.to(compute), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.to(maps.dtype)


def unwarp(
    maps: torch.Tensor,
    row_edges: torch.Tensor,
    col_edges: torch.Tensor,
    patch_size: int,
    height: int,
    width: int,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Bring maps of the warped image (logits, labels) back to the input grid: the inverse of the warp.

    Input pixel `(y, x)` takes the maps' value at its warped coordinate (`input_pixel_targets`), by linear
    interpolation (`"bilinear"`, for logits) or from the nearest map pixel (`"nearest"`, for labels), coordinates
    clamped to the maps. The maps may have any size: a decode head's output at a fraction of the warped size, or
    upsampled; a map of `h x w` pixels covers the warped image with its pixel centres aligned (`map_coordinates`), so
    that reading a map at 1/4 of the warped size equals reading it after `F.interpolate(..., align_corners=False)`
    up to the second interpolation that this saves. Batched (no loop over images), differentiable with respect to
    the maps and the edges for `"bilinear"`, computed in at least float32 and returned in the dtype of `maps`.

    At the warped size this is the segmentation fork's inverse (`ReshaperWithInverse.inverse_transform`) given its
    renormalised row heights and column widths as edges.

    Args:
        maps (`torch.Tensor` of shape `(batch, channels, h, w)`): floating point for `"bilinear"`, any dtype for
            `"nearest"`; `h x w` is the warped size (`num_rows * patch_size`, `num_cols * patch_size`) or any other.
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`), col_edges (`(batch, num_cols + 1)`): the warp,
            in input pixels.
        patch_size (`int`).
        height, width (`int`): the input size.
        mode (`str`): `"bilinear"` or `"nearest"`.

    Returns:
        `torch.Tensor` of shape `(batch, channels, height, width)`, in the dtype of `maps`.
    """
    if mode not in UNWARP_MODES:
        raise ValueError(f"`mode` must be one of {UNWARP_MODES}, got {mode!r}.")
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4 or 0 in maps.shape:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"`maps` must be a non-empty tensor of shape (batch, channels, height, width), got {shape}.")
    _check_edges(row_edges, "row_edges", increasing=True)
    _check_edges(col_edges, "col_edges", increasing=True)
    for value, name in ((patch_size, "patch_size"), (height, "height"), (width, "width")):
        _check_positive_int(value, name)
    if not maps.shape[0] == row_edges.shape[0] == col_edges.shape[0]:
        raise ValueError(f"`maps` holds {maps.shape[0]} images and the warp {row_edges.shape[0]} (row_edges) / "
                         f"{col_edges.shape[0]} (col_edges): they must be equal.")
    if mode == "bilinear" and not maps.is_floating_point():
        raise TypeError(f"`maps` must be floating point for mode='bilinear' (use mode='nearest' for labels), got "
                        f"{maps.dtype}.")
    v, u = input_pixel_targets(row_edges, col_edges, patch_size, height, width)
    warped_height, warped_width = (row_edges.shape[1] - 1) * patch_size, (col_edges.shape[1] - 1) * patch_size
    v = map_coordinates(v, warped_height, maps.shape[2])
    u = map_coordinates(u, warped_width, maps.shape[3])
    return sample_separable(maps, v, u, mode)


def warp_labels(
    labels: torch.Tensor, row_edges: torch.Tensor, edges: torch.Tensor, num_cols: int, patch_size: int
) -> torch.Tensor:
    """Warp a label map as `warp_pixels` warps the image, with nearest sampling in both passes.

    Warped pixel `(i * P + l, j * P + k)` (`P = patch_size`, row band `i`, cell `n = i * num_cols + j`) takes the
    label of the input pixel nearest to the point the image reads: row `y = row_edges[i] + (row_edges[i + 1] -
    row_edges[i]) * l / P`, column `x = edges[n] - i * width + (edges[n + 1] - edges[n]) * k / P` (the cell's
    position in its own band), each rounded to the nearest pixel (`floor(c + 0.5)`) and clamped to the image. Every
    warped label is an input label at the pixel the image sample lies closest to, so `ignore_index` (255) stays
    where it was and no label is invented; the segmentation fork's vertical pass is bilinear and truncates instead
    (see docs/design.md).

    Args:
        labels (`torch.Tensor` of shape `(batch, height, width)`): any dtype (integers for class ids).
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`): row edges in input pixels.
        edges (`torch.Tensor` of shape `(batch, num_rows * num_cols + 1)`): cell edges along the strip of row bands,
            in strip pixels (`strip_edges`, `DartReshaperOutput.strip_edges`).
        num_cols (`int`): cells per row band.
        patch_size (`int`): side of a warped cell in pixels.

    Returns:
        `torch.Tensor` of shape `(batch, num_rows * patch_size, num_cols * patch_size)`, in the dtype of `labels`.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`labels` must be a tensor of shape (batch, height, width), got {shape}.")
    _check_edges(row_edges, "row_edges")
    _check_edges(edges, "edges")
    _check_positive_int(num_cols, "num_cols")
    _check_positive_int(patch_size, "patch_size")
    batch, _, width = labels.shape
    num_rows, patch = row_edges.shape[1] - 1, patch_size
    if edges.shape[1] != num_rows * num_cols + 1 or row_edges.shape[0] != batch or edges.shape[0] != batch:
        raise ValueError(f"The warp does not fit `labels` of shape {tuple(labels.shape)}: row_edges "
                         f"{tuple(row_edges.shape)} and edges {tuple(edges.shape)} must be ({batch}, num_rows + 1) and "
                         f"({batch}, num_rows * {num_cols} + 1).")
    steps = torch.arange(patch, dtype=row_edges.dtype, device=row_edges.device) / patch
    heights = row_edges[:, 1:] - row_edges[:, :-1]
    y = (row_edges[:, :-1, None] + heights[:, :, None] * steps).reshape(batch, num_rows * patch)
    offsets = torch.arange(num_rows, dtype=edges.dtype, device=edges.device).view(1, -1, 1) * width
    starts = edges[:, :-1].reshape(batch, num_rows, num_cols) - offsets
    widths = (edges[:, 1:] - edges[:, :-1]).reshape(batch, num_rows, num_cols)
    x = (starts[..., None] + widths[..., None] * steps.to(edges.dtype)).reshape(batch, num_rows, num_cols * patch)
    rows = (y.detach() + 0.5).floor().clamp(0, labels.shape[1] - 1).to(torch.long)
    cols = (x.detach() + 0.5).floor().clamp(0, width - 1).to(torch.long)
    picked = labels.gather(1, rows.unsqueeze(-1).expand(batch, num_rows * patch, width))  # (B, R * P, W)
    # each warped row reads the columns of its own band
    cols = cols.repeat_interleave(patch, dim=1)  # (B, R * P, K * P)
    return picked.gather(2, cols)


# ------------------------------------------------------------------------------------------------------- module
@dataclass
class DartReshaperOutput:
    """What the image reshaper produces for a batch.

    Attributes:
        warped_pixel_values (`(batch, channels, h, w)`): the warped image, `h = num_rows * patch_size`,
            `w = num_cols * patch_size`.
        score_map (`(batch, grid_rows, grid_cols)`): the scorer's output (`score_grid_size` on both sides, or one
            cell per warped cell with `score_grid_per_cell`).
        pdf (`(batch, grid_rows * grid_cols)`): the score map normalised to sum 1 per image.
        resampled_pdf (`(batch, num_rows * grid_cols)`): the pdf resampled into the row bands by area overlap,
            renormalised (the original's `reshaped_pdf`; the warp does not use it).
        row_edges (`(batch, num_rows + 1)`), col_edges (`(batch, num_cols + 1)`): the warp, in input pixels: warped
            row band `i` reads input rows `[row_edges[i], row_edges[i + 1])`, warped column band `j` input columns
            `[col_edges[j], col_edges[j + 1])`.
        row_heights (`(batch, num_rows)`), col_widths (`(batch, num_cols)`): their differences, in input pixels
            (each sums to the input's height / width).
        strip_edges (`(batch, num_rows * num_cols + 1)`): the cells' edges along the strip of row bands laid end to
            end, in strip pixels (the original's `new_edges`).
    """

    warped_pixel_values: torch.Tensor
    score_map: torch.Tensor
    pdf: torch.Tensor
    resampled_pdf: torch.Tensor
    row_edges: torch.Tensor
    col_edges: torch.Tensor
    row_heights: torch.Tensor
    col_widths: torch.Tensor
    strip_edges: torch.Tensor


def _check_choice(value, allowed, name: str) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {value!r}.")


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, torch.SymInt):  # a size of a traced graph with dynamic shapes (torch.export, ONNX)
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class DartImageReshaper(nn.Module):
    """Pixels `(batch, channels, height, width)` -> a warped image `(batch, channels, h, w)` and the warp.

    A scorer (`scorer_dart.DartScorer`; by default the original's: the whole EfficientNet-B0 trunk and head v1)
    gives a `score_grid_size x score_grid_size` score map of the full input (or one cell per warped cell, with
    `score_grid_per_cell`). Its row and column marginals are cut
    into `h / patch_size` and `w / patch_size` parts of equal mass (the warp, see the module docstring), and every
    part is resampled to `patch_size` pixels. The warped size is the input's divided by `downscale_factor` (448 ->
    224 for the original), or `output_size`. The `uniform` scorer gives the uniform grid exactly (the warped image
    is the input read every `downscale_factor` pixels).

    Args:
        scorer (`str`): `"learned"` or `"uniform"` (no weights).
        scorer_trunk, scorer_head, scorer_hidden_size, scorer_trunk_depth, scorer_max_density_ratio,
            scorer_temperature, freeze_scorer_trunk: the scorer, as in [`DartConfig`] (defaults: the original's
            EfficientNet-B0 trunk, whole, with head v1 and a 96-wide MLP, frozen).
        score_grid_size (`int`): side of the score map.
        score_grid_per_cell (`bool`): a score map of one cell per warped cell instead (`num_rows x num_cols`,
            `h / patch_size x w / patch_size`), which follows the input's size and shape, as the segmentation fork's
            (`H / 16 x W / 16`); `score_grid_size` then only sizes the scorer's construction. Heads v1 and v2 only.
        patch_size (`int`): side of a warped cell in pixels.
        num_channels (`int`): input channels.
        downscale_factor (`int`): input side over warped side when `output_size` is not given; the input's sides
            must then be multiples of `patch_size * downscale_factor`.
        output_size (`int` or `(int, int)`, *optional*): a fixed warped size (multiples of `patch_size`), for
            any input size.
        score_normalization (`str`): `"image"` standardises each image's scores on its own; `"batch"` over the
            whole batch, as the original (an image's warp then depends on the other images).
        first_edge_at_one (`bool`): the original's first column edge, one warped pixel in instead of 0.
        edge_scale_from_first_image (`bool`): the original's edge scale, taken from the batch's first image (see
            `strip_edges`).
        column_sampling (`str`): `"band"` (each row band sampled on its own) or `"strip"` (the original's: along
            the strip of bands, see `warp_pixels`).
    """

    def __init__(
        self,
        scorer: str = "learned",
        scorer_trunk: str = "efficientnet_b0",
        scorer_head: str = "v1",
        scorer_hidden_size: int | None = None,
        scorer_trunk_depth: int | None = None,
        scorer_max_density_ratio: float = 1e4,
        scorer_temperature: float = 1.5,
        freeze_scorer_trunk: bool = True,
        score_grid_size: int = 14,
        score_grid_per_cell: bool = False,
        patch_size: int = 16,
        num_channels: int = 3,
        downscale_factor: int = 2,
        output_size: int | tuple[int, int] | None = None,
        score_normalization: str = "image",
        first_edge_at_one: bool = False,
        edge_scale_from_first_image: bool = False,
        column_sampling: str = "band",
    ):
        super().__init__()
        _check_choice(scorer, SCORERS, "scorer")
        _check_choice(score_normalization, SCORE_NORMALIZATIONS, "score_normalization")
        _check_choice(column_sampling, COLUMN_SAMPLINGS, "column_sampling")
        for value, name in ((first_edge_at_one, "first_edge_at_one"),
                            (edge_scale_from_first_image, "edge_scale_from_first_image"),
                            (score_grid_per_cell, "score_grid_per_cell")):
            _check_bool(value, name)
        for value, name in ((score_grid_size, "score_grid_size"), (patch_size, "patch_size"),
                            (num_channels, "num_channels"), (downscale_factor, "downscale_factor")):
            _check_positive_int(value, name)
        self.patch_size = patch_size
        self.grid_size = score_grid_size
        self.score_grid_per_cell = score_grid_per_cell
        self.num_channels = num_channels
        self.downscale_factor = downscale_factor
        self.output_size = None if output_size is None else self._check_output_size(output_size)
        self.score_normalization = score_normalization
        self.first_edge_at_one = first_edge_at_one
        self.edge_scale_from_first_image = edge_scale_from_first_image
        self.column_sampling = column_sampling
        self.scorer = None
        if scorer == "learned":
            # the token form's configuration checks and builds the scorer (trunk, head, defaults); the image size
            # only sets the saliency head's default trunk depth, and one token per score cell keeps its token-count
            # check quiet for any grid
            config = DartConfig(
                image_size=score_grid_size * patch_size * downscale_factor, patch_size=patch_size,
                num_tokens=score_grid_size**2,
                num_channels=num_channels, score_grid_size=score_grid_size, scorer_trunk=scorer_trunk,
                scorer_head=scorer_head, scorer_hidden_size=scorer_hidden_size, scorer_trunk_depth=scorer_trunk_depth,
                scorer_max_density_ratio=scorer_max_density_ratio, scorer_temperature=scorer_temperature,
                freeze_scorer_trunk=freeze_scorer_trunk,
            )
            with _scorer_construction_dtype():
                self.scorer = DartScorer(config)
            if score_grid_per_cell and self.scorer.version == "saliency":
                raise ValueError("`score_grid_per_cell` needs a v1 or v2 score head: the saliency head's MLP runs on a "
                                 f"fixed {score_grid_size}x{score_grid_size} grid.")

    def _check_output_size(self, output_size) -> tuple[int, int]:
        sides = (output_size, output_size) if isinstance(output_size, int) else output_size
        if (
            not isinstance(sides, (tuple, list)) or len(sides) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % self.patch_size for s in sides)
        ):
            raise ValueError(f"`output_size` must be an int or a pair of ints, positive multiples of `patch_size` "
                             f"({self.patch_size}), got {output_size!r}.")
        return int(sides[0]), int(sides[1])

    def warped_size(self, height: int, width: int, output_size=None) -> tuple[int, int]:
        """The warped `(h, w)` of an input of `height x width` (`output_size` overrides the module's)."""
        output_size = self.output_size if output_size is None else self._check_output_size(output_size)
        if output_size is not None:
            return output_size
        step = self.patch_size * self.downscale_factor
        if height % step or width % step:
            raise ValueError(
                f"`pixel_values` height and width must be multiples of patch_size * downscale_factor = {step}, got "
                f"{height}x{width} (or give `output_size`)."
            )
        return height // self.downscale_factor, width // self.downscale_factor

    def score_grid(self, num_rows: int, num_cols: int) -> tuple[int, int]:
        """The score map's `(rows, cols)` for a warp of `num_rows x num_cols` cells."""
        return (num_rows, num_cols) if self.score_grid_per_cell else (self.grid_size, self.grid_size)

    def compute_scores(self, pixel_values: torch.Tensor, normalization: str,
                       grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Score map `(batch, grid_rows, grid_cols)` (constant 1 for the uniform scorer); the scorer runs in float32.
        `grid` defaults to `score_grid_size` on both sides."""
        grid = (self.grid_size, self.grid_size) if grid is None else tuple(grid)
        if self.scorer is None:
            return pixel_values.new_ones(pixel_values.shape[0], *grid)
        if pixel_values.dtype in _HALF_DTYPES:
            pixel_values = pixel_values.float()
        return self.scorer(pixel_values, normalization, grid=grid)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_size: int | tuple[int, int] | None = None,
        score_map: torch.Tensor | None = None,
        score_normalization: str | None = None,
    ) -> DartReshaperOutput:
        """
        Args:
            pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`).
            output_size (`int` or `(int, int)`, *optional*): overrides the module's warped size.
            score_map (`torch.Tensor` of shape `(batch, grid_rows, grid_cols)`, *optional*): finite non-negative
                scores to use instead of the scorer's (an all-zero map gives the uniform warp); `score_grid_size` on
                both sides, or `(num_rows, num_cols)` with `score_grid_per_cell`.
            score_normalization (`str`, *optional*): overrides the module's.
        """
        check_pixel_values(pixel_values, self.num_channels, 1)
        batch, _, height, width = pixel_values.shape
        out_height, out_width = self.warped_size(height, width, output_size)
        num_rows, num_cols = out_height // self.patch_size, out_width // self.patch_size
        grid_rows, grid_cols = self.score_grid(num_rows, num_cols)
        normalization = self.score_normalization if score_normalization is None else score_normalization
        _check_choice(normalization, SCORE_NORMALIZATIONS, "score_normalization")

        uniform = self.scorer is None and score_map is None
        if score_map is None:
            score_map = self.compute_scores(pixel_values, normalization, (grid_rows, grid_cols))
        elif not isinstance(score_map, torch.Tensor) or tuple(score_map.shape) != (batch, grid_rows, grid_cols):
            shape = tuple(score_map.shape) if isinstance(score_map, torch.Tensor) else type(score_map).__name__
            raise ValueError(f"`score_map` must have shape ({batch}, {grid_rows}, {grid_cols}), got {shape}.")
        elif not _tracing() and (not torch.isfinite(score_map).all() or (score_map < 0).any()):
            # the density divides by the map's sum: NaN, inf or negative scores give NaN or crossing edges
            raise ValueError("`score_map` must hold finite non-negative scores (an all-zero map is the uniform warp).")

        # the geometry runs in float64 (float32 where there is none) and is returned in at least float32, as the
        # token form's
        output_dtype = torch.promote_types(score_map.dtype, torch.float32)
        math_dtype = wide_dtype(score_map)
        pdf = score_density(score_map.reshape(batch, grid_rows * grid_cols).to(math_dtype))
        if uniform:
            row_edges = uniform_edges(batch, num_rows, height, math_dtype, pdf.device)
            col_edges = uniform_edges(batch, num_cols, width, math_dtype, pdf.device)
        else:
            row_cuts, col_cuts = marginal_quantile_cuts(pdf.view(batch, grid_rows, grid_cols), num_rows, num_cols)
            row_edges, col_edges = row_cuts * height / grid_rows, col_cuts * width / grid_cols
        row_heights = row_edges[:, 1:] - row_edges[:, :-1]
        col_widths = col_edges[:, 1:] - col_edges[:, :-1]
        row_weights = row_resampling_weights(row_heights, height / grid_rows, grid_rows)  # (B, R, grid_rows)
        resampled_pdf = torch.bmm(row_weights, pdf.view(batch, grid_rows, grid_cols)).reshape(batch,
                                                                                              num_rows * grid_cols)
        resampled_pdf = resampled_pdf / resampled_pdf.sum(dim=-1, keepdim=True)
        edges = strip_edges(col_edges, num_rows, width, out_width, self.first_edge_at_one,
                            self.edge_scale_from_first_image)
        warped = warp_pixels(pixel_values, row_edges, edges, num_cols, self.patch_size, self.column_sampling)
        geometry = (pdf, resampled_pdf, row_edges, col_edges, row_heights, col_widths, edges)
        pdf, resampled_pdf, row_edges, col_edges, row_heights, col_widths, edges = (
            tensor.to(output_dtype) for tensor in geometry
        )
        return DartReshaperOutput(
            warped_pixel_values=warped,
            score_map=score_map,
            pdf=pdf,
            resampled_pdf=resampled_pdf,
            row_edges=row_edges,
            col_edges=col_edges,
            row_heights=row_heights,
            col_widths=col_widths,
            strip_edges=edges,
        )


# ------------------------------------------------------------------------------------- original checkpoints
_ORIGINAL_SCORER_KEYS = (
    (re.compile(r"^spn\.spn\.spn\.features\.(.+)$"), r"scorer.features.\1"),
    (re.compile(r"^spn\.spn\.spn\.mlp\.net\.0\.(weight|bias)$"), r"scorer.head.fc1.\1"),
    (re.compile(r"^spn\.spn\.spn\.mlp\.net\.2\.(weight|bias)$"), r"scorer.head.fc2.\1"),
)


def original_reshaper_key(key: str) -> str:
    """An original DAIR key (relative to the reshaper: `spn.spn.spn.features.*`, `spn.spn.spn.mlp.net.{0,2}.*`) ->
    the `DartImageReshaper` key (`scorer.features.*`, `scorer.head.fc{1,2}.*`). Raises `KeyError` for any other key."""
    for pattern, replacement in _ORIGINAL_SCORER_KEYS:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    raise KeyError(f"{key!r} is not a key of the original image reshaper (spn.spn.spn.features.* or "
                   f"spn.spn.spn.mlp.net.{{0,2}}.*).")


def load_original_reshaper_weights(
    reshaper: DartImageReshaper, state: dict[str, torch.Tensor], prefix: str = "pre_image."
) -> list[str]:
    """Load the reshaper's weights from an original checkpoint's state dict, key by key.

    Every key that starts with `prefix` (`"pre_image."` in DARMT, `"reshaper."` in the segmentation fork) is mapped
    by `original_reshaper_key`; every tensor of the reshaper must be filled, with a tensor of its shape.

    Args:
        reshaper (`DartImageReshaper`): with a learned scorer with head v1 (the original's).
        state (`dict[str, torch.Tensor]`): the checkpoint's `"model"` entry.
        prefix (`str`): where the reshaper's keys sit in `state`.

    Returns:
        The keys of `state` outside `prefix` (the backbone's), left for the caller.

    Raises:
        `ValueError` for a reshaper without a v1 scorer or a tensor of another shape; `KeyError` naming a key of
        `state` that maps to nothing or a tensor of the reshaper that `state` does not fill.
    """
    if reshaper.scorer is None or reshaper.scorer.version != "v1":
        raise ValueError("`reshaper` must have a learned scorer with head v1 to take the original's weights.")
    own = reshaper.state_dict()
    mapped, others, unexpected = {}, [], []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            others.append(key)
            continue
        target = original_reshaper_key(key[len(prefix):])
        if target not in own:
            unexpected.append(key)
            continue
        if tuple(tensor.shape) != tuple(own[target].shape):
            raise ValueError(f"Key {key}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(own[target].shape)} "
                             f"for {target} in the reshaper.")
        mapped[target] = tensor
    if unexpected:
        raise KeyError(f"Keys of the checkpoint that the reshaper does not hold: {unexpected[:8]}"
                       f"{' ...' if len(unexpected) > 8 else ''}")
    missing = [key for key in own if key not in mapped]
    if missing:
        raise KeyError(f"Tensors of the reshaper that the checkpoint does not fill (prefix {prefix!r}): {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''}")
    reshaper.load_state_dict(mapped, strict=True)
    return others


__all__ = [
    "DartImageReshaper",
    "DartReshaperOutput",
    "input_pixel_targets",
    "input_to_warped",
    "load_original_reshaper_weights",
    "map_coordinates",
    "marginal_quantile_cuts",
    "original_reshaper_key",
    "sample_separable",
    "strip_edges",
    "uniform_edges",
    "unwarp",
    "warp_labels",
    "warp_pixels",
    "warped_pixel_sources",
    "warped_to_input",
]
