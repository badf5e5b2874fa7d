"""Tensor math of the DART tokenizer: score densities, quantile cuts, area-overlap resampling weights, bilinear
sampling of token rows and patches, and token boxes.

Stateless functions of plain tensors. Quantiles are piecewise-linear inverses of a cumulative sum over unit cells
with a `1e-8` guard in the denominator, and resampling weights are area overlaps, as in the original DART code. The
reasons behind the numerics are in `docs/design.md` ("Partition math").
"""

from __future__ import annotations

import torch

QUANTILE_EPS = 1e-8
ROW_WEIGHT_MIN = 1e-6
STRIP_WEIGHT_EPS = 1e-12


def score_density(scores: torch.Tensor) -> torch.Tensor:
    """Normalise non-negative scores to a density over the cells of each image.

    An image whose scores are all zero gets the uniform density, the limit of a constant map; NaN scores stay NaN.

    Args:
        scores (`torch.Tensor` of shape `(batch, num_cells)`): non-negative.

    Returns:
        `torch.Tensor` of shape `(batch, num_cells)`: `scores / scores.sum(-1)`, summing to 1 per image.
    """
    total = scores.sum(dim=-1, keepdim=True)
    empty = total == 0
    density = scores / torch.where(empty, torch.ones_like(total), total)
    return torch.where(empty, torch.full_like(scores, 1.0 / scores.shape[-1]), density)


def piecewise_linear_quantiles(mass: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Cut a mass distribution over unit cells into `num_parts` parts of equal mass.

    Cell `j` spans `[j, j + 1)` and holds `mass[..., j]`. For each level `p = k / num_parts`, `k = 1 .. num_parts - 1`,
    the cut lies in the first cell `j` whose inclusive cumulative sum reaches `p` (the last cell if none does), at
    `j + (p - cumsum_before_j) / (mass_j + 1e-8)`. Gradients reach `mass` through the cumulative sum and `mass_j`.

    Args:
        mass (`torch.Tensor` of shape `(batch, num_cells)`): non-negative masses summing to ~1 per row.
        num_parts (`int`): number of parts (>= 1).

    Returns:
        `torch.Tensor` of shape `(batch, num_parts + 1)`: the edges `[0, q_1, ..., q_{num_parts-1}, num_cells]`
        in cell units.
    """
    batch, num_cells = mass.shape
    levels = torch.arange(1, num_parts, device=mass.device, dtype=mass.dtype) / num_parts
    cumulative = mass.cumsum(dim=-1)
    # the first cell whose cumulative mass reaches the level, counted rather than searched (ONNX has no searchsorted)
    index = (cumulative.detach().unsqueeze(1) < levels.view(1, -1, 1)).sum(dim=-1)
    index = index.clamp(max=num_cells - 1)
    before = torch.cat([cumulative.new_zeros(batch, 1), cumulative[:, :-1]], dim=1)
    cut = index.to(mass.dtype) + (levels - before.gather(1, index)) / (mass.gather(1, index) + QUANTILE_EPS)
    zeros = mass.new_zeros(batch, 1)
    ends = mass.new_full((batch, 1), float(num_cells))
    return torch.cat([zeros, cut, ends], dim=1)


def interval_overlap(starts: torch.Tensor, ends: torch.Tensor, cell_starts: torch.Tensor, cell_ends: torch.Tensor):
    """Length of the overlap between intervals `[starts, ends)` and cells `[cell_starts, cell_ends)`.

    Args:
        starts, ends (`torch.Tensor` of shape `(batch, num_intervals)`).
        cell_starts, cell_ends (`torch.Tensor` of shape `(num_cells,)`).

    Returns:
        `torch.Tensor` of shape `(batch, num_intervals, num_cells)`, non-negative.
    """
    lo = torch.maximum(starts.unsqueeze(-1), cell_starts)
    hi = torch.minimum(ends.unsqueeze(-1), cell_ends)
    return (hi - lo).clamp(min=0)


def row_resampling_weights(row_heights: torch.Tensor, cell_size: float, num_cells: int) -> torch.Tensor:
    """Weights that resample `num_cells` fixed rows of height `cell_size` into rows of the given heights.

    `w[b, i, j] = overlap(new row i, old row j) / cell_size`, normalised over `j` (denominator clamped at 1e-6).

    Args:
        row_heights (`torch.Tensor` of shape `(batch, num_rows)`): heights in the same unit as `cell_size`,
            summing to `num_cells * cell_size`.
        cell_size (`float`): height of one old row.
        num_cells (`int`): number of old rows.

    Returns:
        `torch.Tensor` of shape `(batch, num_rows, num_cells)`.
    """
    ends = row_heights.clamp(min=0).cumsum(dim=-1)
    starts = torch.cat([ends.new_zeros(ends.shape[0], 1), ends[:, :-1]], dim=1)
    cell_starts = torch.arange(num_cells, device=row_heights.device, dtype=row_heights.dtype) * cell_size
    weights = interval_overlap(starts, ends, cell_starts, cell_starts + cell_size) / cell_size
    return weights / weights.sum(dim=-1, keepdim=True).clamp(min=ROW_WEIGHT_MIN)


def strip_resampling_weights(edges: torch.Tensor, num_cells: int) -> torch.Tensor:
    """Area-overlap weights between the intervals `[edges[n], edges[n+1])` and unit cells `[l, l+1)`.

    Normalised over the cells with a `1e-12` guard in the denominator.

    Args:
        edges (`torch.Tensor` of shape `(batch, num_intervals + 1)`): increasing, in cell units.
        num_cells (`int`): number of unit cells.

    Returns:
        `torch.Tensor` of shape `(batch, num_intervals, num_cells)`.
    """
    cell_starts = torch.arange(num_cells, device=edges.device, dtype=edges.dtype)
    weights = interval_overlap(edges[:, :-1], edges[:, 1:], cell_starts, cell_starts + 1)
    return weights / (weights.sum(dim=-1, keepdim=True) + STRIP_WEIGHT_EPS)


def sample_rows(pixel_values: torch.Tensor, row_starts: torch.Tensor, row_heights: torch.Tensor, patch_size: int):
    """Resample every row of the partition to `patch_size` pixel rows and lay the rows end to end as one strip.

    Row `i` is sampled at `y = row_starts[i] + row_heights[i] * k / patch_size`, `k = 0 .. patch_size - 1`, over every
    input column, by linear interpolation between the two nearest input rows, `y` clamped to the image (the values of
    `grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)` at those points). A NaN position
    gives NaN pixels.

    Args:
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`).
        row_starts, row_heights (`torch.Tensor` of shape `(batch, num_rows)`): in input pixels.
        patch_size (`int`).

    Returns:
        `torch.Tensor` of shape `(batch, channels, patch_size, num_rows * width)`: strip column `i * width + x` is
        column `x` of row `i`.
    """
    batch, channels, _, width = pixel_values.shape
    num_rows = row_starts.shape[1]
    steps = torch.arange(patch_size, device=row_starts.device, dtype=row_starts.dtype) / patch_size
    y = row_starts.unsqueeze(-1) + row_heights.unsqueeze(-1) * steps  # (B, R, P)
    rows = interpolate_rows(pixel_values, y.reshape(batch, num_rows * patch_size))  # (B, C, R * P, W)
    return rows.view(batch, channels, num_rows, patch_size, width).transpose(2, 3).reshape(
        batch, channels, patch_size, num_rows * width
    )


def interpolate_rows(pixel_values: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The rows of `pixel_values` at fractional positions `y`, by linear interpolation between the two nearest rows.

    `y` is in row-index coordinates (row `i` at `y = i`) and is clamped to `[0, height - 1]`: the values of
    `grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)` at those rows. A NaN position
    gives NaN pixels.

    Args:
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`).
        y (`torch.Tensor` of shape `(batch, num_positions)`).

    Returns:
        `torch.Tensor` of shape `(batch, channels, num_positions, width)`.
    """
    batch, channels, height, width = pixel_values.shape
    y = y.clamp(0, height - 1)
    whole = y.detach().floor()
    fraction = (y - whole).to(pixel_values.dtype).reshape(batch, 1, -1, 1)
    # the clamp only acts on NaN positions, whose integer cast is out of range
    top = whole.to(torch.long).clamp(0, height - 1).reshape(batch, 1, -1, 1)
    bottom = (top + 1).clamp(max=height - 1)
    shape = (batch, channels, y.shape[1], width)
    top = pixel_values.gather(2, top.expand(shape))
    bottom = pixel_values.gather(2, bottom.expand(shape))
    return top + (bottom - top) * fraction


def strip_sample_points(edges: torch.Tensor, patch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the patches sample the row strip: integer column and fraction of each sample point.

    Token `n` samples columns `x = edges[n] + (edges[n+1] - edges[n]) * k / patch_size`, `k = 0 .. patch_size - 1`
    (and rows `y = k` of the strip, exactly). `x` is returned as `index + fraction`, computed as
    `floor(edges[n]) + local` from the token's own offset and width, so that no strip-long coordinate is rounded.

    Args:
        edges (`torch.Tensor` of shape `(batch, num_tokens + 1)`): in strip pixels.
        patch_size (`int`).

    Returns:
        `(index, fraction)`: `(batch, num_tokens * patch_size)` integer columns (`torch.long`) and the fractions in
        `[0, 1)` (differentiable with respect to the edges).
    """
    batch = edges.shape[0]
    steps = torch.arange(patch_size, device=edges.device, dtype=edges.dtype) / patch_size
    starts, widths = edges[:, :-1], edges[:, 1:] - edges[:, :-1]
    whole = starts.detach().floor()
    local = (starts - whole).unsqueeze(-1) + widths.unsqueeze(-1) * steps  # (B, N, P)
    local_whole = local.detach().floor()
    index = (whole.unsqueeze(-1) + local_whole).to(torch.long).reshape(batch, -1)
    return index, (local - local_whole).reshape(batch, -1)


def sample_strip(strip: torch.Tensor, edges: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Linear interpolation of the row strip at the patches' sample points (see `strip_sample_points`).

    Columns `i` and `i + 1` are weighted `1 - f` and `f`, and a column past either end of the strip counts as zero:
    the values of `grid_sample(strip, grid, mode="bilinear", padding_mode="zeros", align_corners=True)` at those
    points (the strip's rows are sampled at integer `y`, so only `x` interpolates).

    Args:
        strip (`torch.Tensor` of shape `(batch, channels, patch_size, strip_width)`).
        edges (`torch.Tensor` of shape `(batch, num_tokens + 1)`): in strip pixels.
        patch_size (`int`).

    Returns:
        `torch.Tensor` of shape `(batch, channels, patch_size, num_tokens * patch_size)`.
    """
    batch, channels, rows, strip_width = strip.shape
    index, fraction = strip_sample_points(edges, patch_size)
    # a zero column either side: padded column i + 1 is strip column i (a concatenation, not `F.pad`: see the design
    # notes)
    zeros = strip.new_zeros(batch, channels, rows, 1)
    padded = torch.cat([zeros, strip, zeros], dim=3)
    left = index.clamp(-1, strip_width) + 1
    right = (index + 1).clamp(-1, strip_width) + 1
    shape = (batch, channels, rows, index.shape[1])
    left = padded.gather(3, left.view(batch, 1, 1, -1).expand(shape))
    right = padded.gather(3, right.view(batch, 1, 1, -1).expand(shape))
    fraction = fraction.to(strip.dtype).view(batch, 1, 1, -1)
    return left + (right - left) * fraction


def sample_regions(
    pixel_values: torch.Tensor, row_starts: torch.Tensor, row_heights: torch.Tensor, edges: torch.Tensor, patch_size: int
) -> torch.Tensor:
    """Resample every token's region to `patch_size x patch_size` pixels.

    `sample_rows` resamples each row to `patch_size` pixels high and lays the rows end to end as one strip;
    `sample_strip` then interpolates the patches along the strip. Sampling runs in at least float32.

    Args:
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`).
        row_starts, row_heights (`torch.Tensor` of shape `(batch, num_rows)`): rows in input pixels.
        edges (`torch.Tensor` of shape `(batch, num_tokens + 1)`): token edges along the strip, in strip pixels
            (`[0, num_rows * width]`).
        patch_size (`int`).

    Returns:
        `torch.Tensor` of shape `(batch, channels, patch_size, num_tokens * patch_size)`: the patches side by side.
    """
    dtype = torch.promote_types(pixel_values.dtype, torch.float32)
    strip = sample_rows(pixel_values.to(dtype), row_starts, row_heights, patch_size)
    patches = sample_strip(strip, edges.to(dtype), patch_size)
    return patches.to(pixel_values.dtype)


def token_boxes(row_edges: torch.Tensor, edges: torch.Tensor, width: int) -> torch.Tensor:
    """Input-pixel box `(x0, y0, x1, y1)` of the main piece of each token.

    A token covers `[edges[n], edges[n+1])` of the strip, where row `i` occupies `[i * width, (i + 1) * width)`.
    A token that straddles rows is cut into one piece per row; its box is the widest piece.

    Args:
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`): row boundaries in input pixels.
        edges (`torch.Tensor` of shape `(batch, num_tokens + 1)`): token edges in strip pixels.
        width (`int`): input width.

    Returns:
        `torch.Tensor` of shape `(batch, num_tokens, 4)`.
    """
    num_rows = row_edges.shape[1] - 1
    row_lo = torch.arange(num_rows, device=edges.device, dtype=edges.dtype) * width
    pieces = interval_overlap(edges[:, :-1], edges[:, 1:], row_lo, row_lo + width)  # (B, N, R)
    row = pieces.argmax(dim=-1)  # (B, N)
    offset = row.to(edges.dtype) * width
    x0 = (torch.maximum(edges[:, :-1], offset) - offset).clamp(0, width)
    x1 = (torch.minimum(edges[:, 1:], offset + width) - offset).clamp(0, width)
    y0 = row_edges.gather(1, row)
    y1 = row_edges.gather(1, row + 1)
    return torch.stack([x0, y0, x1, y1], dim=-1)


def token_pieces(row_edges: torch.Tensor, edges: torch.Tensor, width: int) -> list[list[tuple[int, float, float, float, float]]]:
    """Every piece of every token as `(token_index, x0, y0, x1, y1)` in input pixels (for drawing).

    Args:
        row_edges (`torch.Tensor` of shape `(batch, num_rows + 1)`), edges (`(batch, num_tokens + 1)`), width.

    Returns:
        One list of pieces per image.
    """
    num_rows = row_edges.shape[1] - 1
    row_lo = torch.arange(num_rows, device=edges.device, dtype=edges.dtype) * width
    pieces = interval_overlap(edges[:, :-1], edges[:, 1:], row_lo, row_lo + width)
    result = []
    for b in range(edges.shape[0]):
        image_pieces = []
        for n, i in (pieces[b] > 1e-6).nonzero().tolist():
            lo = float(max(edges[b, n], row_lo[i]) - row_lo[i])
            hi = float(min(edges[b, n + 1], row_lo[i] + width) - row_lo[i])
            image_pieces.append((n, lo, float(row_edges[b, i]), hi, float(row_edges[b, i + 1])))
        result.append(image_pieces)
    return result
