"""The tokenizer's tensor math: quantiles, resampling weights, sampling grids, gradients, the uniform identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modeling_dart.embeddings_dart import DartEmbeddings
from modeling_dart.partition_dart import (
    piecewise_linear_quantiles,
    row_resampling_weights,
    sample_regions,
    sample_strip,
    strip_resampling_weights,
    token_boxes,
    token_pieces,
)
from tests.conftest import tiny_config


def reference_quantiles(mass: np.ndarray, parts: int) -> np.ndarray:
    """Independent float64 loop: walk the cells until the running sum reaches each level."""
    edges = [0.0]
    for k in range(1, parts):
        level = k / parts
        running = 0.0
        for j, m in enumerate(mass):
            if running + m >= level or j == len(mass) - 1:
                edges.append(j + (level - running) / (m + 1e-8))
                break
            running += m
    edges.append(float(len(mass)))
    return np.array(edges)


@pytest.mark.parametrize("cells,parts", [(14, 14), (14, 11), (196, 121), (196, 392), (5, 1), (3, 7)])
def test_quantiles_match_reference(cells, parts):
    gen = torch.Generator().manual_seed(cells * 1000 + parts)
    mass = torch.rand(3, cells, generator=gen, dtype=torch.float64) + 0.05
    mass = mass / mass.sum(-1, keepdim=True)
    ours = piecewise_linear_quantiles(mass, parts)
    assert ours.shape == (3, parts + 1)
    for b in range(3):
        np.testing.assert_allclose(ours[b].numpy(), reference_quantiles(mass[b].numpy(), parts), rtol=0, atol=1e-9)
    assert torch.all(ours[:, 1:] >= ours[:, :-1])


def test_quantiles_of_uniform_mass_are_even():
    mass = torch.full((2, 14), 1 / 14, dtype=torch.float64)
    edges = piecewise_linear_quantiles(mass, 7)
    torch.testing.assert_close(edges, torch.linspace(0, 14, 8, dtype=torch.float64).expand(2, -1), atol=1e-6, rtol=0)


def test_quantiles_put_more_cuts_where_mass_is():
    mass = torch.full((1, 10), 0.01, dtype=torch.float64)
    mass[0, 4] = 0.91
    edges = piecewise_linear_quantiles(mass, 10)[0]
    inside = ((edges[1:-1] >= 4) & (edges[1:-1] < 5)).sum().item()
    assert inside >= 8


def test_quantiles_gradcheck():
    gen = torch.Generator().manual_seed(0)
    raw = (torch.rand(2, 9, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()

    def fn(raw):
        return piecewise_linear_quantiles(raw / raw.sum(-1, keepdim=True), 5)

    assert torch.autograd.gradcheck(fn, (raw,), eps=1e-7, atol=1e-6)


def test_row_weights_identity_for_uniform_rows():
    heights = torch.full((2, 4), 8.0, dtype=torch.float64)
    weights = row_resampling_weights(heights, 8.0, 4)
    torch.testing.assert_close(weights, torch.eye(4, dtype=torch.float64).expand(2, -1, -1))


def test_row_weights_split_by_area():
    # one new row of height 12 covering old rows [0, 8) fully and [8, 16) by half
    heights = torch.tensor([[12.0, 20.0]], dtype=torch.float64)
    weights = row_resampling_weights(heights, 8.0, 4)
    torch.testing.assert_close(weights[0, 0], torch.tensor([1.0, 0.5, 0, 0], dtype=torch.float64) / 1.5)
    torch.testing.assert_close(weights[0, 1], torch.tensor([0, 0.5, 1.0, 1.0], dtype=torch.float64) / 2.5)


def test_strip_weights_identity_and_overlap():
    edges = torch.arange(0, 7, dtype=torch.float64).unsqueeze(0)
    torch.testing.assert_close(strip_resampling_weights(edges, 6)[0], torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)
    weights = strip_resampling_weights(torch.tensor([[0.0, 1.5, 6.0]], dtype=torch.float64), 6)
    torch.testing.assert_close(weights[0, 0, :2], torch.tensor([1 / 1.5, 0.5 / 1.5], dtype=torch.float64))


def loop_sample_reference(pixels, row_starts, row_heights, edges, patch):
    """Independent reference: one grid_sample per row strip, then per token (the original's loop structure)."""
    batch, channels, height, width = pixels.shape
    num_rows = row_starts.shape[1]
    out = []
    for b in range(batch):
        strips = []
        for i in range(num_rows):
            ys = row_starts[b, i] + row_heights[b, i] * torch.arange(patch, dtype=pixels.dtype) / patch
            xs = torch.linspace(0, width - 1, width, dtype=pixels.dtype)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([2 * gx / (width - 1) - 1, 2 * gy / (height - 1) - 1], -1)[None]
            strips.append(F.grid_sample(pixels[b : b + 1], grid, align_corners=True, padding_mode="border"))
        strip = torch.cat(strips, dim=3)
        total = strip.shape[3]
        tokens = []
        for n in range(edges.shape[1] - 1):
            xs = edges[b, n] + (edges[b, n + 1] - edges[b, n]) * torch.arange(patch, dtype=pixels.dtype) / patch
            ys = torch.arange(patch, dtype=pixels.dtype)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([2 * gx / (total - 1) - 1, 2 * gy / (patch - 1) - 1], -1)[None]
            tokens.append(F.grid_sample(strip, grid, align_corners=True))
        out.append(torch.cat(tokens, dim=3))
    return torch.cat(out)


@pytest.mark.parametrize("height, width, rows, patch", [(40, 48, 3, 4), (8, 12, 2, 16)])
def test_batched_sampling_matches_per_row_loop(height, width, rows, patch):
    """The second case samples rows finer than the pixels, so the last row's samples pass the border (clamped)."""
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64, requires_grad=True)
    heights = torch.rand(2, rows, generator=gen, dtype=torch.float64) + 0.2
    heights = (heights / heights.sum(-1, keepdim=True) * height).requires_grad_()
    starts = torch.cat([torch.zeros(2, 1, dtype=torch.float64), heights.cumsum(-1)[:, :-1]], 1)
    widths = torch.rand(2, 10, generator=gen, dtype=torch.float64) + 0.1
    edges = torch.cat([torch.zeros(2, 1, dtype=torch.float64), (widths / widths.sum(-1, keepdim=True)).cumsum(-1)], 1)
    edges = (edges * width * rows).requires_grad_()
    weights = torch.randn(2, 3, patch, 10 * patch, generator=gen, dtype=torch.float64)
    results = []
    for sampler in (sample_regions, loop_sample_reference):
        out = sampler(pixels, starts, heights, edges, patch)
        results.append((out, *torch.autograd.grad((out * weights).sum(), (pixels, heights, edges))))
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)


def _strip_reference(strip, edges, patch):
    """float64 `grid_sample` of the strip at the patches' points (the sampling the original does, without rounding)."""
    strip, edges = strip.double(), edges.double()
    batch, _, rows, total = strip.shape
    steps = torch.arange(patch, dtype=torch.float64) / patch
    xs = (edges[:, :-1, None] + (edges[:, 1:] - edges[:, :-1])[..., None] * steps).reshape(batch, 1, -1)
    xs = xs.expand(batch, rows, -1)
    ys = torch.arange(rows, dtype=torch.float64).view(1, rows, 1).expand_as(xs)
    grid = torch.stack([2 * xs / (total - 1) - 1, 2 * ys / (rows - 1) - 1], -1)
    return F.grid_sample(strip, grid, align_corners=True)


def test_float32_sampling_along_a_long_strip_does_not_round_the_coordinates():
    """At 448 the strip is 14 x 448 = 6272 pixels long, where a float32 coordinate is only good to ~5e-4 pixels; the
    samples must still be those of the exact coordinates (float32 `grid_sample` on that strip is off by ~1e-3 on noise,
    and by a different amount under each operation order: eager, compiled, exported)."""
    gen = torch.Generator().manual_seed(3)
    batch, patch, total, tokens = 2, 16, 14 * 448, 196
    strip = torch.randn(batch, 3, patch, total, generator=gen)
    widths = torch.rand(batch, tokens, generator=gen, dtype=torch.float64) + 0.05
    edges = (torch.cat([torch.zeros(batch, 1, dtype=torch.float64), widths.cumsum(-1)], 1) / widths.sum(-1, keepdim=True)
             * total).float()
    ours = sample_strip(strip, edges, patch)
    assert ours.dtype == torch.float32 and ours.shape == (batch, 3, patch, tokens * patch)
    torch.testing.assert_close(ours.double(), _strip_reference(strip, edges, patch), atol=2e-5, rtol=0)


def test_strip_sampling_gradcheck_off_the_pixel_centres():
    gen = torch.Generator().manual_seed(4)
    strip = torch.randn(1, 2, 3, 20, generator=gen, dtype=torch.float64, requires_grad=True)
    widths = torch.rand(1, 5, generator=gen, dtype=torch.float64) + 0.3
    edges = torch.cat([torch.zeros(1, 1, dtype=torch.float64), widths.cumsum(-1) / widths.sum() * 18.6], 1) + 0.37
    edges.requires_grad_()
    assert torch.autograd.gradcheck(lambda s, e: sample_strip(s, e, 3), (strip, edges))
    torch.testing.assert_close(sample_strip(strip, edges, 3), _strip_reference(strip, edges, 3), atol=1e-12, rtol=0)


def _embeddings64(**overrides):
    config = tiny_config(scorer="uniform", image_size=32, patch_size=8, score_grid_size=4, num_tokens=16, **overrides)
    torch.manual_seed(0)
    module = DartEmbeddings(config).double().eval()
    with torch.no_grad():
        module.position_embeddings.normal_()
    return module


def test_uniform_scores_give_the_standard_patch_grid():
    """DESIGN.md §1: constant scores at the base resolution reduce to non-overlapping patches."""
    module = _embeddings64()
    pixels = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    out = module(pixels)
    expected = F.conv2d(pixels, module.projection.weight, module.projection.bias, stride=8).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.patch_tokens, expected, atol=1e-5, rtol=0)
    # positions are the base table itself, boxes are the 8x8 grid
    torch.testing.assert_close(out.position_embeddings, module.patch_position_table().expand(2, -1, -1), atol=1e-6, rtol=0)
    grid = torch.tensor([[8 * (n % 4), 8 * (n // 4), 8 * (n % 4) + 8, 8 * (n // 4) + 8] for n in range(16)],
                        dtype=torch.float64)
    torch.testing.assert_close(out.regions[0], grid, atol=1e-5, rtol=0)


def _released_geometry_embeddings():
    from modeling_dart import DartConfig

    config = DartConfig(scorer="uniform", image_size=224, hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    torch.manual_seed(0)
    module = DartEmbeddings(config).eval()
    with torch.no_grad():
        module.position_embeddings.normal_()
    return module


def test_uniform_scorer_is_exactly_the_plain_patch_embedding():
    """scorer="uniform" at a multiple of the base grid short-cuts to the exact grid: bit-identical to a ViT."""
    module = _released_geometry_embeddings()
    for size in (224, 448):
        pixels = torch.rand(2, 3, size, size)
        with torch.no_grad():
            out = module(pixels)
            stride = size // 224
            expected = F.conv2d(pixels[:, :, ::stride, ::stride], module.projection.weight, module.projection.bias,
                                stride=16).flatten(2).transpose(1, 2)
        assert torch.equal(out.patch_tokens, expected)
        assert torch.equal(out.position_embeddings[0], module.patch_position_table())


def test_constant_scores_interpolation_path_reproduces_the_grid():
    """The general (interpolating) path with a constant score map lands on the same grid up to float32 rounding."""
    module = _released_geometry_embeddings()
    yy, xx = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    smooth = torch.stack([torch.sin(xx / 17), torch.cos(yy / 23), torch.sin((xx + yy) / 31)])[None]
    with torch.no_grad():
        out = module(smooth, score_map=torch.ones(1, 14, 14))
    patches = sample_regions(smooth, out.row_edges[:, :-1], out.row_edges.diff(dim=1), out.token_edges, 16)
    expected = F.unfold(smooth, 16, stride=16).view(1, 3, 16, 16, 196).permute(0, 1, 2, 4, 3).reshape(1, 3, 16, -1)
    # Float32 strip coordinates reach 224 * 14: a sample at the very end of a row can pick up ~1e-4 of the next row's
    # first pixel. Everywhere else the grid is reproduced to float rounding.
    error = (patches - expected).abs()
    assert error.max() < 5e-4
    assert (error > 2e-5).float().mean() < 0.01
    torch.testing.assert_close(out.position_embeddings[0], module.patch_position_table(), atol=2e-4, rtol=0)


def test_token_geometry_is_computed_beyond_float32():
    """A cut lies at `(level - cumulative mass) / cell mass`: in float32, the rounding of the cumulative mass over a
    light cell moved the edges by ~1e-3 pixels, and differently for every kernel order (eager vs compiled, batch
    sizes). The geometry is computed in float64: a float32 score map gives the float64 geometry rounded once."""
    module = _released_geometry_embeddings()
    generator = torch.Generator().manual_seed(4)
    # a 1e4 dynamic range, as the saliency head's default `scorer_max_density_ratio` allows
    scores = torch.exp(torch.rand(2, 14, 14, generator=generator) * math.log(1e4))
    pixels = torch.randn(2, 3, 448, 448, generator=generator)
    with torch.no_grad():
        single, double = module(pixels, score_map=scores), module(pixels.double(), score_map=scores.double())
    assert single.token_edges.dtype == single.regions.dtype == torch.float32
    for name in ("row_edges", "token_edges"):
        expected = getattr(double, name).to(torch.float32)
        assert torch.equal(getattr(single, name), expected), (name, (getattr(single, name) - expected).abs().max())
    # the boxes are then formed in float32 from those edges, along the strip of all rows (14 x 448 pixels, where a
    # float32 step is 5e-4 pixels)
    torch.testing.assert_close(single.regions, double.regions.float(), atol=1e-3, rtol=0)


def test_sampling_gradcheck_wrt_scores():
    """Tokens and positions are differentiable functions of the score map (float64 gradcheck)."""
    module = _embeddings64()
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    scores = (torch.rand(1, 4, 4, generator=gen, dtype=torch.float64) + 0.2).requires_grad_()

    def fn(scores):
        out = module(pixels, num_tokens=9, score_map=scores)
        return out.patch_tokens, out.position_embeddings

    assert torch.autograd.gradcheck(fn, (scores,), eps=1e-6, atol=1e-5)


def test_scores_receive_gradient_through_the_model():
    config = tiny_config()
    module = DartEmbeddings(config)
    pixels = torch.randn(2, 3, 64, 64)
    out = module(pixels)
    out.embeddings.sum().backward()
    assert module.scorer.head.fc1.weight.grad is not None and module.scorer.head.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.scorer.features.parameters())


def test_token_pieces_cover_the_image_once():
    module = _embeddings64()
    gen = torch.Generator().manual_seed(5)
    scores = torch.rand(2, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    out = module(torch.zeros(2, 3, 32, 32, dtype=torch.float64), num_tokens=12, score_map=scores)
    for b, pieces in enumerate(token_pieces(out.row_edges, out.token_edges, 32)):
        area = sum((x1 - x0) * (y1 - y0) for _, x0, y0, x1, y1 in pieces)
        assert math.isclose(area, 32 * 32, rel_tol=1e-6)
        assert {n for n, *_ in pieces} == set(range(12))
    boxes = token_boxes(out.row_edges, out.token_edges, 32)
    assert boxes.shape == (2, 12, 4)
    assert torch.all(boxes[..., 2] >= boxes[..., 0]) and torch.all(boxes[..., 3] > boxes[..., 1])


def test_training_projection_is_the_patch_convolution():
    """With gradients, tokens come from one matrix product over the flattened patches (faster backward on CPU); it
    must be the stride-`patch` convolution, in value and in both gradients. Without gradients the convolution runs
    itself (bit-identical inference)."""
    torch.manual_seed(0)
    embeddings = DartEmbeddings(tiny_config())
    weight, bias = embeddings.projection.weight, embeddings.projection.bias
    with torch.no_grad():
        bias.normal_()
    patches = torch.randn(3, 3, 8, 5 * 8, requires_grad=True)
    reference_patches = patches.detach().clone().requires_grad_(True)
    reference_weight = weight.detach().clone().requires_grad_(True)
    reference = F.conv2d(reference_patches, reference_weight, bias.detach(), stride=8).flatten(2).transpose(1, 2)
    tokens = embeddings.project(patches)
    assert tokens.shape == (3, 5, 32)
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(reference)
    (tokens * upstream).sum().backward()
    (reference * upstream).sum().backward()
    torch.testing.assert_close(patches.grad, reference_patches.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight.grad, reference_weight.grad, rtol=1e-5, atol=1e-4)

    with torch.no_grad():
        assert torch.equal(embeddings.project(patches), embeddings.projection(patches).flatten(2).transpose(1, 2))
    # a whole image (the exact standard grid path) is projected by the convolution, with gradients too
    image = torch.randn(2, 3, 32, 32, requires_grad=True)
    torch.testing.assert_close(embeddings.project(image), embeddings.projection(image).flatten(2).transpose(1, 2),
                               rtol=0, atol=0)


# ------------------------------------------------------------------------------------- degenerate score maps


def _assert_valid_cuts(edges: torch.Tensor, total: float, name: str, atol: float = 1e-6):
    """Edges `(batch, parts + 1)`: finite, 0 first, `total` last, strictly increasing."""
    assert torch.isfinite(edges).all(), (name, edges)
    assert torch.all(edges[:, 0] == 0), (name, edges[:, 0])
    torch.testing.assert_close(edges[:, -1], torch.full_like(edges[:, -1], total), atol=atol, rtol=0)
    assert torch.all(edges[:, 1:] > edges[:, :-1]), (name, edges)


def _one_hot(cells: int, index: int) -> torch.Tensor:
    mass = torch.zeros(1, cells, dtype=torch.float64)
    mass[0, index] = 1.0
    return mass


DEGENERATE_MASSES = {
    "one cell": torch.ones(1, 1, dtype=torch.float64),
    "one-hot first": _one_hot(14, 0),
    "one-hot middle": _one_hot(14, 6),
    "one-hot last": _one_hot(14, 13),
    "constant": torch.full((1, 14), 1 / 14, dtype=torch.float64),
    "two far cells": torch.tensor([[0.5] + [0.0] * 12 + [0.5]], dtype=torch.float64),
    "1e-300 beside 1": torch.tensor([[1e-300, 1.0, 1e-300, 0.0]], dtype=torch.float64),
    "range 1e-30 .. 1": torch.logspace(-30, 0, 9, dtype=torch.float64).unsqueeze(0),
}


@pytest.mark.parametrize("parts", [1, 2, 3, 16, 64])
@pytest.mark.parametrize("name", list(DEGENERATE_MASSES))
def test_quantiles_of_degenerate_masses_are_valid_cuts(name, parts):
    mass = DEGENERATE_MASSES[name]
    mass = mass / mass.sum(dim=-1, keepdim=True)
    edges = piecewise_linear_quantiles(mass, parts)
    _assert_valid_cuts(edges, float(mass.shape[1]), name, atol=0)


def test_quantiles_of_a_one_hot_mass_split_its_cell_evenly():
    """All the mass in cell 6 of 14: every cut lies in that cell, at `6 + k / parts` (worked by hand)."""
    edges = piecewise_linear_quantiles(_one_hot(14, 6), 4)
    torch.testing.assert_close(edges[0], torch.tensor([0.0, 6.25, 6.5, 6.75, 14.0], dtype=torch.float64),
                               atol=1e-7, rtol=0)


def test_score_density_normalises_and_maps_an_all_zero_map_to_uniform():
    from modeling_dart.partition_dart import score_density

    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 4.0], [2.0, 2.0, 2.0, 2.0]], dtype=torch.float64)
    expected = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.125, 0.375, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25]],
                            dtype=torch.float64)
    assert torch.equal(score_density(scores), expected)
    assert torch.equal(score_density(torch.zeros(2, 1)), torch.ones(2, 1))
    # NaN scores stay NaN (a broken scorer is not hidden behind a uniform grid)
    assert torch.isnan(score_density(torch.tensor([[1.0, float("nan")]]))).all()


def test_non_finite_row_geometry_gives_nan_pixels_not_an_index_error():
    """A NaN row position (from NaN scores) used to become the index -2**63 of a gather."""
    pixels = torch.rand(1, 2, 16, 8)
    starts = torch.tensor([[0.0, float("nan")]])
    heights = torch.tensor([[8.0, float("nan")]])
    edges = torch.tensor([[0.0, 4.0, 8.0, 12.0, 16.0]])
    patches = sample_regions(pixels, starts, heights, edges, 4)
    assert patches.shape == (1, 2, 4, 16)
    # token 0 samples strip columns 0..3 of row 0; token 1 blends column 7 with the NaN row's column 8 (at weight 0)
    assert torch.isfinite(patches[..., :4]).all() and torch.isnan(patches[..., 8:]).all()
    nan_edges = torch.tensor([[0.0, float("nan"), 8.0, float("inf"), 16.0]])
    assert torch.isnan(sample_regions(pixels, starts[:, :1], heights[:, :1] * 2, nan_edges, 4)[..., 4:8]).all()


def _one_hot_map(grid: int, row: int, col: int) -> torch.Tensor:
    scores = torch.zeros(1, grid, grid)
    scores[0, row, col] = 1.0
    return scores


DEGENERATE_MAPS = {
    "constant": torch.full((1, 4, 4), 0.37),
    "one-hot inside": _one_hot_map(4, 2, 1),
    "one-hot corner": _one_hot_map(4, 3, 3),
    "one row": torch.tensor([[[0.0] * 4, [0.0] * 4, [1.0, 2.0, 0.0, 1.0], [0.0] * 4]]),
    "tiny 1e-38": torch.full((1, 4, 4), 1e-38),
    "subnormal 1e-45": torch.full((1, 4, 4), 1e-45),
    "huge 3e38": torch.full((1, 4, 4), 3e38),
    "range 1e-38 .. 1e38": torch.logspace(-38, 38, 16).view(1, 4, 4),
    "all zero": torch.zeros(1, 4, 4),
}


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 16, 64])
@pytest.mark.parametrize("scores", list(DEGENERATE_MAPS.values()), ids=list(DEGENERATE_MAPS))
def test_degenerate_score_maps_give_a_valid_partition(scores, num_tokens):
    """Rows cover the image height and tokens the strip of all rows: finite, increasing, from 0 to the total; the
    tokens and their boxes are finite."""
    torch.manual_seed(0)
    module = DartEmbeddings(tiny_config(image_size=32, score_grid_size=4, num_tokens=16)).eval()
    height, width = 32, 48
    num_rows = max(1, round(math.sqrt(num_tokens)))
    with torch.no_grad():
        out = module(torch.rand(1, 3, height, width), num_tokens=num_tokens, score_map=scores)
    _assert_valid_cuts(out.row_edges, float(height), "row_edges", atol=1e-4)
    _assert_valid_cuts(out.token_edges, float(width * num_rows), "token_edges", atol=1e-3)
    for name in ("embeddings", "patch_tokens", "position_embeddings", "pdf", "resampled_pdf", "regions"):
        assert torch.isfinite(getattr(out, name)).all(), name
    torch.testing.assert_close(out.pdf.sum(dim=-1), torch.ones(1), atol=1e-6, rtol=0)


# a 64x64 image cut into R = round(sqrt(N)) equal rows of N / R equal tokens, written out by hand
UNIFORM_BOXES_64 = {
    1: [[0, 0, 64, 64]],
    2: [[0, 0, 32, 64], [32, 0, 64, 64]],
    4: [[0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]],
    16: [[16 * col, 16 * row, 16 * col + 16, 16 * row + 16] for row in range(4) for col in range(4)],
}


@pytest.mark.parametrize("head", ["v1", "v2", "saliency"])
@pytest.mark.parametrize("normalization", ["image", "batch"])
@pytest.mark.parametrize("num_tokens", sorted(UNIFORM_BOXES_64))
def test_one_cell_score_map_is_the_uniform_grid(num_tokens, normalization, head):
    """`score_grid_size=1`: the one-cell map has nothing to adapt to, so the tokens are the uniform grid."""
    from modeling_dart import DartForImageClassification

    torch.manual_seed(0)
    config = tiny_config(score_grid_size=1, num_tokens=num_tokens, scorer_head=head,
                         score_normalization=normalization)
    model = DartForImageClassification(config).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    for name in ("logits", "score_map", "token_edges", "row_edges"):
        assert torch.isfinite(getattr(out, name)).all(), name
    expected = torch.tensor(UNIFORM_BOXES_64[num_tokens], dtype=torch.float32)
    torch.testing.assert_close(out.regions[0], expected, atol=1e-4, rtol=0)
