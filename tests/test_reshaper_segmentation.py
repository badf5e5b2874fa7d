"""Segmentation with the image reshaper: the inverse warp of logits (`unwarp`), the label warp (`warp_labels`), and
their parity with the segmentation fork's `ReshaperWithInverse` (`dair_seg_reshaper_golden.*`; tolerances from the
fixtures README, section "Segmentation reshaper with inverse").

Fixtures: ../shared/fixtures/original (or $DART_FIXTURES_DIR).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch.nn import functional as F

from modeling_dart.reshaper_dart import (
    DartImageReshaper,
    sample_separable,
    unwarp,
    warp_labels,
)
from tests.conftest import require_fixture

SEGMENTATION_GOLDEN = "dair_seg_reshaper_golden.safetensors"
NUM_CLASSES = 150  # the fixture's analytic logits
IGNORE = 255


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the cases are small, and two threads on a busy two-core machine wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- the fork's goldens
@functools.cache
def _golden(case: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(require_fixture() / SEGMENTATION_GOLDEN, "pt") as handle:
        return {key[len(case) + 1:]: handle.get_tensor(key) for key in handle.keys() if key.startswith(case + ".")}


def golden(case: str) -> dict[str, torch.Tensor]:
    require_fixture(SEGMENTATION_GOLDEN)
    return _golden(case)


def analytic_logits(batch: int, height: int, width: int, channels) -> torch.Tensor:
    """The fixture's logits `L[b, c, y, x] = ((37 x + 91 y + 53 c + 17 b) mod 256 - 128) / 64` (float32, exact) for
    the channels `channels`."""
    b = torch.arange(batch).view(-1, 1, 1, 1)
    c = torch.as_tensor(channels).view(1, -1, 1, 1)
    y = torch.arange(height).view(1, 1, -1, 1)
    x = torch.arange(width).view(1, 1, 1, -1)
    return (((37 * x + 91 * y + 53 * c + 17 * b) % 256 - 128) / 64).float()


def edges_from_heights(heights: torch.Tensor) -> torch.Tensor:
    heights = heights.double()
    return torch.cat([torch.zeros(heights.shape[0], 1, dtype=torch.float64), heights.cumsum(-1)], dim=1)


def fork_inverse_edges(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fork's inverse reads the row heights and column widths renormalised per image to sum to H and W."""
    g = golden(case)
    _, _, height, width = g["images_uint8"].shape
    rows, cols = g["row_heights"].double(), g["col_heights"].double()
    return (edges_from_heights(rows / rows.sum(-1, keepdim=True) * height),
            edges_from_heights(cols / cols.sum(-1, keepdim=True) * width))


def grid_sample_at(maps: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An independent reference for the sampling stage: `grid_sample` (bilinear, border padding, align_corners) of
    each image at the separable grid of warped coordinates `(y[b], x[b])`, as the fork's inverse samples."""
    batch, _, height, width = maps.shape
    out = []
    for b in range(batch):
        gx = (x[b] / (width - 1) * 2 - 1).view(1, 1, -1).expand(1, y.shape[1], -1)
        gy = (y[b] / (height - 1) * 2 - 1).view(1, -1, 1).expand(1, -1, x.shape[1])
        grid = torch.stack([gx, gy], dim=-1).to(maps.dtype)
        out.append(F.grid_sample(maps[b : b + 1], grid, mode="bilinear", padding_mode="border", align_corners=True))
    return torch.cat(out)


SOME_CHANNELS = [0, 1, 2, 53, 75, 128, 148, 149]


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).abs().max())


@pytest.mark.parametrize("case", ["seg_a", "seg_b"])
def test_inverse_warp_reproduces_the_forks_maps_and_logits(case):
    """Stage 1, the maps: our warped coordinates of every input row and column from the fork's renormalised heights
    against its stored maps (README atol 5e-3). Stage 2, the sampling: `sample_separable` at the stored maps against
    `grid_sample` at the same maps, which reproduces the stored channel 0 bit for bit (1e-3: `grid_sample` normalises
the coordinates to [-1, 1] and back in float32, which moves them by up to about 1e-4 px, and the logits jump by 4
across a pixel where the modulo wraps). End to end: `unwarp`
    of the analytic logits from the heights against the fork's output (README atol 1e-2): channel 0 stored (seg_b),
    other channels rebuilt by `grid_sample` at the stored maps."""
    from modeling_dart.reshaper_dart import input_pixel_targets

    g = golden(case)
    batch, _, height, width = g["images_uint8"].shape
    row_edges, col_edges = fork_inverse_edges(case)
    v, u = input_pixel_targets(row_edges, col_edges, 16, height, width)
    errors = {"y_map": max_error(v, g["inverse_y_map"]), "x_map": max_error(u, g["inverse_x_map"])}
    assert max(errors.values()) < 5e-3, errors

    logits = analytic_logits(batch, height, width, SOME_CHANNELS)
    reference = grid_sample_at(logits, g["inverse_y_map"], g["inverse_x_map"])
    if case == "seg_b":
        assert torch.equal(reference[:, :1], g["inverse_logits_first1ch"])  # the reference is the fork's output
    sampled = sample_separable(logits, g["inverse_y_map"], g["inverse_x_map"])
    errors["sampling"] = max_error(sampled, reference)
    assert errors["sampling"] < 1e-3, errors

    ours = unwarp(logits, row_edges, col_edges, 16, height, width)
    assert ours.shape == (batch, len(SOME_CHANNELS), height, width) and ours.dtype == torch.float32
    errors["logits"] = max_error(ours, reference)
    if case == "seg_b":
        errors["logits_stored_channel_0"] = max_error(ours[:, :1], g["inverse_logits_first1ch"])
    assert max(errors["logits"], errors.get("logits_stored_channel_0", 0.0)) < 1e-2, errors
    print(case, errors)


# -------------------------------------------------------------------------------------- the inverse on its own
# the hand geometry of test_reshaper: input rows [0, 24) and [24, 64) warped to 8 rows each, columns [0, 32) and
# [32, 64) likewise; input row y lands at warped row y / 3 (y < 24) or 8 + (y - 24) / 5, column x at x / 4
HAND_ROWS = torch.tensor([[0.0, 24.0, 64.0]], dtype=torch.float64)
HAND_COLS = torch.tensor([[0.0, 32.0, 64.0]], dtype=torch.float64)


def hand_warped_rows() -> torch.Tensor:
    y = torch.arange(64, dtype=torch.float64)
    return torch.where(y < 24, y / 3, 8 + (y - 24) / 5)


@pytest.mark.parametrize(("map_size", "first_centre", "step"), [(4, 1.5, 4.0), (16, 0.0, 1.0), (32, -0.25, 0.5)])
def test_inverse_warp_reads_maps_of_any_size_at_aligned_pixel_centres(map_size, first_centre, step):
    """A decode head's logits at 1/4 of the warped 16x16 image, at its size and upsampled 2x: map pixel `m` is centred
    on warped coordinate `first_centre + m * step` (`align_corners=False`). A map linear in the warped row,
    `f(v) = 3 v + 1`, comes back as `f` at each input row's warped coordinate, held at the outermost centres."""
    centres = first_centre + step * torch.arange(map_size, dtype=torch.float64)
    column = 3 * centres + 1
    maps = column.view(1, 1, -1, 1).expand(1, 2, map_size, map_size).contiguous()
    back = unwarp(maps, HAND_ROWS, HAND_COLS, 8, 64, 64)
    assert back.shape == (1, 2, 64, 64) and back.dtype == torch.float64
    v = hand_warped_rows().clamp(centres[0], centres[-1])
    expected = (3 * v + 1).view(1, 1, 64, 1).expand(1, 2, 64, 64)
    torch.testing.assert_close(back, expected, atol=1e-12, rtol=0)


def test_inverse_warp_of_a_quarter_size_map_equals_reading_its_upsampling_where_that_is_linear():
    """Reading a 1/4-size map directly is `F.interpolate(..., align_corners=False)` followed by the inverse, without
    the second interpolation: on a map linear in both directions the two agree away from the clamped borders."""
    m = torch.arange(4, dtype=torch.float64)
    coarse = (2 * m.view(-1, 1) - 5 * m.view(1, -1) + 0.5).expand(1, 3, 4, 4).contiguous()
    direct = unwarp(coarse, HAND_ROWS, HAND_COLS, 8, 64, 64)
    upsampled = F.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    via_upsampling = unwarp(upsampled, HAND_ROWS, HAND_COLS, 8, 64, 64)
    # the upsampled map is linear from warped pixel 2 to 13 (pixels 0, 1, 14, 15 hold clamped coarse values)
    rows = (hand_warped_rows() >= 2) & (hand_warped_rows() <= 13)
    cols = (torch.arange(64) / 4 >= 2) & (torch.arange(64) / 4 <= 13)
    inside = rows.view(-1, 1) & cols.view(1, -1)
    torch.testing.assert_close(direct[..., inside], via_upsampling[..., inside], atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inverse_warp_in_half_precision_blends_in_float32(dtype):
    """Half-precision logits come back in their dtype, as the float32 inverse of the same values rounded once."""
    generator = torch.Generator().manual_seed(0)
    maps = (torch.randn(2, 5, 16, 16, generator=generator) * 4).to(dtype)
    rows = torch.cat([HAND_ROWS, torch.tensor([[0.0, 40.0, 64.0]], dtype=torch.float64)])
    cols = torch.cat([HAND_COLS, torch.tensor([[0.0, 10.0, 64.0]], dtype=torch.float64)])
    half = unwarp(maps, rows.to(torch.float32), cols.to(torch.float32), 8, 64, 64)
    assert half.dtype == dtype and half.shape == (2, 5, 64, 64)
    full = unwarp(maps.float(), rows.to(torch.float32), cols.to(torch.float32), 8, 64, 64)
    assert torch.equal(half, full.to(dtype))


def test_inverse_warp_is_batched_each_image_with_its_own_warp():
    generator = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 4, 12, 20, generator=generator)  # 3/4 of a 16x... warped image: any size
    sizes = torch.rand(3, 4, generator=generator, dtype=torch.float64) + 0.2
    rows = edges_from_heights(sizes[:, :2] / sizes[:, :2].sum(-1, keepdim=True) * 48)
    cols = edges_from_heights(sizes[:, 2:] / sizes[:, 2:].sum(-1, keepdim=True) * 80)
    batched = unwarp(maps, rows, cols, 8, 48, 80)
    for b in range(3):
        alone = unwarp(maps[b : b + 1], rows[b : b + 1], cols[b : b + 1], 8, 48, 80)
        assert torch.equal(batched[b : b + 1], alone)
    labels = torch.randint(0, 9, (3, 1, 16, 16), generator=generator)
    nearest = unwarp(labels, rows, cols, 8, 48, 80, mode="nearest")
    assert nearest.dtype == torch.long and set(nearest.unique().tolist()) <= set(labels.unique().tolist())


def test_inverse_warp_is_differentiable_gradcheck():
    """float64 gradcheck with respect to the logits and the inner edges of both axes (the outer edges are the image's
    borders, where the coordinates sit on the clamp)."""
    generator = torch.Generator().manual_seed(2)
    maps = torch.randn(1, 1, 4, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    inner_rows = torch.tensor([[4.3]], dtype=torch.float64, requires_grad=True)
    inner_cols = torch.tensor([[3.7, 6.2]], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, 1, dtype=torch.float64)

    def inverse(maps, inner_rows, inner_cols):  # a 7x9 input warped to 2x3 cells of 2 px, read from a 4x6 map
        rows = torch.cat([zero, inner_rows, zero + 7], dim=1)
        cols = torch.cat([zero, inner_cols, zero + 9], dim=1)
        return unwarp(maps, rows, cols, 2, 7, 9)

    assert torch.autograd.gradcheck(inverse, (maps, inner_rows, inner_cols))


# ------------------------------------------------------------------------------------------------ label warping
@pytest.mark.parametrize("case", ["seg_a", "seg_b"])
def test_label_warp_matches_the_fork_where_its_label_is_unambiguous(case):
    """The fork reads labels as it reads pixels: its vertical pass is bilinear (then truncated), its horizontal pass
    nearest. Where the two input rows that its vertical sample blends hold the same label at the column its nearest
    sample picks (and that sample is not a half-pixel tie), its label is unambiguous: ours, sampling the nearest row
    instead, must be that label. seg_b's stored float mask (before truncation) is that label there; the truncated masks
    of both cases equal ours there or lie one below it, where the float blend of two equal labels rounded just under
    the integer."""
    g = golden(case)
    labels = g["gt_mask"].long()
    batch, height, width = labels.shape
    rows, cols = height // 16, width // 16
    row_edges, strip = edges_from_heights(g["row_heights"]), g["new_edges"].double()
    ours = warp_labels(labels, row_edges, strip, cols, 16)
    assert ours.shape == (batch, height, width) and ours.dtype == torch.long

    # where the fork samples: rows y = Y_r + h_r k / 16, columns x = e_s - r W + (e_{s+1} - e_s) l / 16
    t = torch.arange(16, dtype=torch.float64) / 16
    heights = g["row_heights"].double()
    y = (row_edges[:, :-1, None] + heights[:, :, None] * t).reshape(batch, height)
    band_start = torch.arange(rows, dtype=torch.float64).view(1, -1, 1) * width
    starts = strip[:, :-1].reshape(batch, rows, cols) - band_start
    widths = strip.diff(dim=-1).reshape(batch, rows, cols)
    x = (starts[..., None] + widths[..., None] * t).reshape(batch, rows, width).repeat_interleave(16, dim=1)
    column = (x + 0.5).floor().clamp(0, width - 1).long()
    above = y.floor().clamp(0, height - 1).long()
    below = (above + 1).clamp(max=height - 1)

    def read(at_rows):
        return labels.gather(1, at_rows.unsqueeze(-1).expand(-1, -1, width)).gather(2, column)

    tie = ((x - x.floor()) - 0.5).abs() < 1e-3
    unambiguous = (read(above) == read(below)) & ~tie
    assert unambiguous.double().mean() > 0.9
    assert torch.equal(ours[unambiguous], read(above)[unambiguous])
    theirs = g["warped_mask"].long()
    difference = (theirs - ours)[unambiguous]
    assert set(difference.unique().tolist()) <= {0, -1}
    assert (difference == -1).double().mean() < 0.03
    if case == "seg_b":
        blended = g["warped_mask_float"].double()
        # within 1e-2, not exactly: the fork's vertical pass reads column j at j plus a linspace rounding (~1e-5),
        # which blends in a trace of the next column's label
        assert (blended - ours)[unambiguous].abs().max() < 1e-2
    # ours holds only labels of the input; the fork's truncation invents some (>= 150 and not 255)
    assert set(ours.unique().tolist()) <= set(labels.unique().tolist())
    invented = (theirs >= NUM_CLASSES) & (theirs != IGNORE)
    assert invented.double().mean() > 0.02 and not ((ours >= NUM_CLASSES) & (ours != IGNORE)).any()


def test_label_warp_is_nearest_in_both_passes_and_keeps_the_ignore_index():
    """The uniform warp of 64x64 into 32x32 reads every other label exactly, as the pixels; the hand warp reads the
    nearest input row and column of each sample point; ignore_index pixels stay 255."""
    generator = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (2, 64, 64), generator=generator)
    labels[:, 10:20, 30:50] = IGNORE
    reshaper = DartImageReshaper(scorer="uniform", score_grid_size=4, patch_size=8)
    warp = reshaper(torch.zeros(2, 3, 64, 64))
    uniform = warp_labels(labels, warp.row_edges, warp.strip_edges, 4, 8)
    assert torch.equal(uniform, labels[:, ::2, ::2])

    # rows [0, 24) -> warped rows 0..7 read y = 3 l, rows [24, 64) -> warped rows 8..15 read y = 24 + 5 l;
    # columns: one band of [0, 10) and [10, 64), x = 10 k / 8 and 10 + 54 k / 8, rounded half up
    strip = torch.tensor([[0.0, 10.0, 64.0, 74.0, 128.0]], dtype=torch.float64)
    warped = warp_labels(labels[:1], HAND_ROWS, strip, 2, 8)
    k = torch.arange(8, dtype=torch.float64)
    expected_rows = torch.cat([3 * k, 24 + 5 * k]).long()
    expected_cols = torch.cat([(10 * k / 8 + 0.5).floor(), (10 + 54 * k / 8 + 0.5).floor()]).long()
    assert torch.equal(warped[0], labels[0][expected_rows][:, expected_cols])
    ignored = warped[0] == IGNORE
    assert ignored.any() and torch.equal(ignored, labels[0][expected_rows][:, expected_cols] == IGNORE)
    with pytest.raises(ValueError, match="labels"):
        warp_labels(labels[0], warp.row_edges, warp.strip_edges, 4, 8)
    with pytest.raises(ValueError, match="warp does not fit"):
        warp_labels(labels, warp.row_edges, warp.strip_edges, 3, 8)


# ------------------------------------------------------------------------------------ the segmentation model
LABELS = {i: f"class_{i}" for i in range(4)}


def segmentation_backbone(kind: str):
    """A tiny UperNet (Swin, ConvNeXt or RMT inside) or Segformer configuration with 4 labels, for 32x32 images."""
    from transformers import ConvNextConfig, SegformerConfig, SwinConfig, UperNetConfig

    from modeling_dart import RmtConfig

    if kind == "segformer":  # logits at a quarter of the warped size
        return SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                               patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                               decoder_hidden_size=8, id2label=LABELS)
    stages = [f"stage{i}" for i in range(1, 4)]
    if kind == "convnext":
        backbone = ConvNextConfig(num_stages=3, hidden_sizes=[8, 16, 16], depths=[1, 1, 1], out_features=stages)
    elif kind == "swin":
        backbone = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1], num_heads=[1, 2, 2],
                              window_size=2, out_features=stages)
    else:
        backbone = RmtConfig(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 3, 4],
                             heads_ranges=[4, 4, 6, 6], mlp_ratios=[2, 2, 2, 2],
                             chunkwise_recurrents=[True, True, True, False], layerscales=[False] * 4, projection=16,
                             drop_path_rate=0.0, out_features=stages + ["stage4"])
    return UperNetConfig(backbone_config=backbone, hidden_size=8, auxiliary_channels=4, pool_scales=[1, 2],
                         id2label=LABELS)


def segmentation_config(kind: str = "convnext", **overrides):
    """64x64 inputs warped to 32x32 (cells of 8 px on a 4x4 score grid); a uniform scorer unless overridden."""
    from modeling_dart import DartReshaperConfig

    fields = dict(backbone_config=segmentation_backbone(kind), image_size=64, patch_size=8, score_grid_size=4,
                  scorer="uniform")
    fields.update(overrides)
    return DartReshaperConfig(**fields)


def learned_segmentation_config(kind: str = "convnext", **overrides):
    return segmentation_config(kind, scorer="learned", scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4,
                               **overrides)


def segmenter(config, seed: int = 0):
    from modeling_dart import DartReshaperForSemanticSegmentation

    torch.manual_seed(seed)
    return DartReshaperForSemanticSegmentation(config).eval()


def pixels(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def label_maps(batch: int = 2, size: int = 64, seed: int = 2) -> torch.Tensor:
    labels = torch.randint(0, len(LABELS), (batch, size, size), generator=torch.Generator().manual_seed(seed))
    labels[:, 5:9, 20:40] = IGNORE
    return labels


def uniform_unwarp_by_hand(warped: torch.Tensor) -> torch.Tensor:
    """The uniform warp of 64 into 32 reads input pixel 2 v at warped pixel v: input pixel y is warped coordinate y / 2,
    so even rows and columns take a warped value, odd ones the mean of two (the last held at warped pixel 31)."""
    y = torch.arange(64)
    low, high = y // 2, ((y + 1) // 2).clamp(max=31)
    rows = (warped[:, :, low] + warped[:, :, high]) / 2
    return (rows[..., low] + rows[..., high]) / 2


def test_config_takes_a_segmentation_model_and_each_model_refuses_the_other_kind():
    from transformers import UperNetConfig

    from modeling_dart import (
        DartReshaperConfig,
        DartReshaperForImageClassification,
        DartReshaperForSemanticSegmentation,
        RmtConfig,
    )

    config = segmentation_config("rmt")
    assert type(config.backbone_config) is UperNetConfig and config.num_labels == 4 and config.id2label == LABELS
    saved = config.to_dict()
    assert saved["backbone_config"]["model_type"] == "upernet"
    assert saved["backbone_config"]["backbone_config"]["model_type"] == "rmt"
    again = DartReshaperConfig.from_dict(saved)
    assert type(again.backbone_config.backbone_config) is RmtConfig and again.to_dict() == saved
    with pytest.raises(ValueError, match=r"backbone_config.*image classifier"):
        DartReshaperForImageClassification(config)
    from tests.test_reshaper_classification import tiny_config

    with pytest.raises(ValueError, match=r"backbone_config.*semantic segmentation"):
        DartReshaperForSemanticSegmentation(tiny_config("convnext"))
    with pytest.raises(TypeError, match="DartReshaperConfig"):
        DartReshaperForSemanticSegmentation(segmentation_backbone("convnext"))


@pytest.mark.parametrize("kind", ["convnext", "rmt"])
def test_every_parameter_and_buffer_is_initialised(kind):
    """Two models built from one seed hold the same finite tensors (nothing left as uninitialised memory), and no
    weight matrix is left all zeros or all equal."""
    first, second = segmenter(learned_segmentation_config(kind)), segmenter(learned_segmentation_config(kind))
    for key, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[key]), key
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), key
            if key.endswith("weight") and tensor.dim() >= 2:
                assert tensor.std() > 0, key


@pytest.mark.parametrize("kind", ["convnext", "swin", "rmt"])
def test_uniform_warp_segments_the_resized_image_and_brings_the_logits_back(kind):
    """With the uniform scorer the warped image and labels are every other input pixel; the loss is the segmentation
    model's own (UperNet: cross-entropy plus the auxiliary head's, 255 ignored) on them; the logits are its logits
    read back at each input pixel's warped coordinate, at the input's resolution."""
    model = segmenter(segmentation_config(kind))
    x, labels = pixels(), label_maps()
    with torch.no_grad():
        out = model(x, labels=labels)
        expected = model.backbone(pixel_values=x[:, :, ::2, ::2], labels=labels[:, ::2, ::2])
    assert torch.equal(out.warped_pixel_values, x[:, :, ::2, ::2]) and torch.equal(out.warped_labels,
                                                                                    labels[:, ::2, ::2])
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.warped_logits, expected.logits, atol=1e-6, rtol=0)
    assert out.logits.shape == (2, 4, 64, 64) and out.warped_logits.shape == (2, 4, 32, 32)
    torch.testing.assert_close(out.logits, uniform_unwarp_by_hand(out.warped_logits), atol=1e-6, rtol=0)
    with torch.no_grad():
        plain = model(x)
    assert plain.loss is None and plain.warped_labels is None and torch.equal(plain.logits, out.logits)


def test_a_segmentation_model_with_quarter_size_logits_segformer():
    """Segformer returns logits at a quarter of its input: they are read back from that size (no upsampling first),
    and its own loss upsamples them to the warped labels."""
    model = segmenter(segmentation_config("segformer"))
    x, labels = pixels(), label_maps()
    with torch.no_grad():
        out = model(x, labels=labels)
        expected = model.backbone(pixel_values=out.warped_pixel_values, labels=out.warped_labels)
    assert out.warped_logits.shape == (2, 4, 8, 8) and out.logits.shape == (2, 4, 64, 64)
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-6, rtol=0)
    assert torch.equal(out.logits, unwarp(out.warped_logits, out.row_edges, out.col_edges, 8, 64, 64))


def test_learned_warp_training_step_and_half_precision():
    """A learned scorer warps each image its own way; the loss reaches the scorer head (through the warped image)
    and the segmentation model, the trunk stays frozen; a bfloat16 model returns bfloat16 logits on the input grid
    with the float32 model's warp (its scorer stays float32)."""
    model = segmenter(learned_segmentation_config("convnext")).train()
    x, labels = pixels(batch=3, seed=4), label_maps(batch=3, seed=5)
    out = model(x, labels=labels)
    assert out.logits.shape == (3, 4, 64, 64) and (out.row_edges.diff(dim=-1) > 0).all()
    assert not torch.equal(out.row_edges[0], out.row_edges[1])
    assert set(out.warped_labels.unique().tolist()) <= set(labels.unique().tolist())
    out.loss.backward()
    assert all(p.grad is None for p in model.reshaper.scorer.features.parameters())
    assert model.reshaper.scorer.head.fc1.weight.grad is not None
    assert all(p.grad is not None for p in model.backbone.decode_head.parameters())
    model = model.eval()
    with torch.no_grad():
        full = model(x)
        half = model.to(torch.bfloat16)(x)
    assert half.logits.dtype == torch.bfloat16 and half.logits.shape == (3, 4, 64, 64)
    assert torch.equal(half.row_edges, full.row_edges) and torch.equal(half.col_edges, full.col_edges)


def test_a_given_score_map_places_the_warp_of_image_labels_and_logits(monkeypatch):
    """`score_map=` replaces the scorer's map for the image, the labels and the way back: an all-zero map is the
    plain resize (every other pixel, as the uniform scorer), a map whose left column scores 4x the others gives that
    column more warped columns, and the loss reaches the given map."""
    model = segmenter(learned_segmentation_config("convnext"))
    monkeypatch.setattr(model.reshaper.scorer, "forward", lambda *a, **k: pytest.fail("the scorer ran"))
    x, labels = pixels(), label_maps()
    with torch.no_grad():
        flat = model(x, labels=labels, score_map=torch.zeros(2, 4, 4))
    # the general sampler, not the uniform scorer's exact shortcut: equal up to rounding (labels: exactly)
    torch.testing.assert_close(flat.warped_pixel_values, x[:, :, ::2, ::2], atol=1e-5, rtol=0)
    assert torch.equal(flat.warped_labels, labels[:, ::2, ::2])
    torch.testing.assert_close(flat.logits, uniform_unwarp_by_hand(flat.warped_logits), atol=1e-6, rtol=0)
    scores = torch.ones(2, 4, 4)
    scores[:, :, 0] = 4.0
    scores.requires_grad_(True)
    out = model.train()(x, labels=labels, score_map=scores)
    assert (out.col_edges[:, 1] < 16).all() and torch.allclose(out.row_edges, flat.row_edges)
    assert torch.equal(out.logits, unwarp(out.warped_logits, out.row_edges, out.col_edges, 8, 64, 64))
    out.loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_the_ignore_index_stays_through_a_learned_warp_and_follows_the_models_config():
    """A block of ignored pixels (rows and columns 16..47) under a learned warp: the warped labels hold only the
    input's labels, and a warped row holds ignored pixels exactly where the input row it reads (row edges, nearest)
    lies in the block. A model whose UperNet ignores another index (9) accepts it, keeps it, and refuses 255."""
    model = segmenter(learned_segmentation_config("convnext"))
    x = pixels(batch=2, seed=6)
    labels = torch.full((2, 64, 64), 2)
    labels[:, 16:48, 16:48] = IGNORE
    with torch.no_grad():
        out = model(x, labels=labels)
    warped = out.warped_labels
    assert set(warped.unique().tolist()) == {2, IGNORE}
    assert not torch.equal(out.row_edges[0], torch.linspace(0, 64, 5))  # not the uniform warp
    for b in range(2):
        for r in range(32):
            band, offset = divmod(r, 8)
            top, bottom = out.row_edges[b, band].item(), out.row_edges[b, band + 1].item()
            y = min(int(top + (bottom - top) * offset / 8 + 0.5), 63)
            assert bool((warped[b, r] == IGNORE).any()) == (16 <= y < 48), (b, r, y)

    upernet = segmentation_backbone("convnext")
    upernet.loss_ignore_index = 9
    other = segmenter(learned_segmentation_config("convnext", backbone_config=upernet))
    assert other.ignore_index == 9
    relabelled = torch.where(labels == IGNORE, 9, labels)
    with torch.no_grad():
        out9 = other(x, labels=relabelled)
    assert torch.equal(out9.warped_labels == 9, out.warped_labels == IGNORE) and torch.isfinite(out9.loss)
    with pytest.raises(ValueError, match=r"labels.*\[0, 4\) or 9 \(ignored\).*got 255"):
        other(x, labels=labels)


def test_bad_labels_are_refused_naming_the_problem():
    model = segmenter(segmentation_config("convnext"))
    x, labels = pixels(), label_maps()
    with pytest.raises(ValueError, match=r"labels.*\(2, 64, 64\).*got \(2, 32, 32\)"):
        model(x, labels=labels[:, ::2, ::2])
    with pytest.raises(ValueError, match="drop the channel dimension"):
        model(x, labels=labels[:, None])
    with pytest.raises(TypeError, match="labels.*integer.*float32"):
        model(x, labels=labels.float())
    with pytest.raises(TypeError, match="labels.*integer.*bool"):
        model(x, labels=labels > 0)
    with pytest.raises(TypeError, match="labels.*torch.Tensor"):
        model(x, labels=labels.tolist())
    for bad in (4, -1, 254):
        wrong = labels.clone()
        wrong[1, 3, 7] = bad
        with pytest.raises(ValueError, match=rf"labels.*\[0, 4\) or 255.*got {bad}"):
            model(x, labels=wrong)
    model(x[:1], labels=torch.full((1, 64, 64), IGNORE))  # all ignored: accepted


def test_save_load_auto_class_pipeline_and_post_processing(tmp_path, photo):
    from transformers import AutoModelForSemanticSegmentation, pipeline

    from modeling_dart import DartImageProcessor, DartReshaperForSemanticSegmentation

    model = segmenter(learned_segmentation_config("convnext"))
    assert type(AutoModelForSemanticSegmentation.from_config(model.config)) is DartReshaperForSemanticSegmentation
    model.save_pretrained(tmp_path)
    processor = DartImageProcessor.for_semantic_segmentation(64, 64)
    processor.save_pretrained(tmp_path)
    saved = (tmp_path / "config.json").read_text()
    assert '"AutoModelForSemanticSegmentation": "modeling_reshaper_dart.DartReshaperForSemanticSegmentation"' in saved
    assert '"AutoModelForImageClassification"' not in saved
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded) is DartReshaperForSemanticSegmentation and reloaded.config.id2label == LABELS
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key

    segment = pipeline("image-segmentation", model=str(tmp_path))
    found = segment(photo)
    inputs = DartImageProcessor.from_pretrained(tmp_path)(photo, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    with torch.no_grad():
        outputs = reloaded(**inputs)
    (classes,) = processor.post_process_semantic_segmentation(outputs, target_sizes=[(photo.height, photo.width)])
    assert classes.shape == (photo.height, photo.width)
    assert [item["label"] for item in found] == [LABELS[c] for c in classes.unique().tolist()]
    for item in found:
        assert item["mask"].size == photo.size
        mask = torch.as_tensor(list(item["mask"].getdata())).view(photo.height, photo.width) > 0
        assert torch.equal(mask, classes == next(k for k, v in LABELS.items() if v == item["label"]))


REMOTE_SCRIPT = """
import sys
sys.modules["modeling_dart"] = None  # the package is NOT importable here
import json, torch
from transformers import AutoModelForSemanticSegmentation
answers = {}
for folder in sys.argv[2:]:
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.load(sys.argv[1])).logits
    answers[folder] = {"module": type(model).__module__, "backbone": type(model.backbone.backbone).__name__,
                       "logits": logits.flatten()[::97].tolist()}
print(json.dumps(answers))
"""


def test_remote_code_loads_without_the_package(tmp_path):
    """UperNet with RMT inside (this package's backbone, which only the folder's code defines there, nested in a
    Transformers configuration that looks it up by model type) and with ConvNeXt inside (Transformers' own)."""
    import json
    import subprocess
    import sys

    models = {"rmt": segmenter(learned_segmentation_config("rmt")), "convnext": segmenter(segmentation_config())}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    torch.save(pixels(batch=1), tmp_path / "x.pt")
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    folders = [str(tmp_path / name) for name in models]
    result = subprocess.run([sys.executable, str(tmp_path / "remote.py"), str(tmp_path / "x.pt"), *folders],
                            check=False, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, model), folder in zip(models.items(), folders):
        answer = answers[folder]
        assert "modeling_dart" not in answer["module"]
        assert answer["backbone"] == type(model.backbone.backbone).__name__
        with torch.no_grad():
            expected = model(pixels(batch=1)).logits.flatten()[::97]
        torch.testing.assert_close(torch.tensor(answer["logits"]), expected, atol=1e-5, rtol=0)
    assert answers[folders[0]]["backbone"] == "RmtBackbone" and answers[folders[1]]["backbone"] == "ConvNextBackbone"


# ------------------------------------------------------------------------------- a score grid that follows the input
def test_a_per_cell_score_grid_follows_the_inputs_shape_and_transposes_with_it():
    """`score_grid_per_cell`: one score cell per warped cell, so a portrait input (96x48 warped to 48x24 in 8-pixel
    cells) has a 6x3 map; its transpose (landscape) with the transposed map gives the transposed warp (the clean
    warp's geometry treats rows and columns alike)."""
    reshaper = DartImageReshaper(scorer="uniform", score_grid_size=4, score_grid_per_cell=True, patch_size=8)
    generator = torch.Generator().manual_seed(7)
    portrait = torch.randn(2, 3, 96, 48, generator=generator)
    scores = torch.rand(2, 6, 3, generator=generator, dtype=torch.float64) + 0.05
    tall = reshaper(portrait, score_map=scores)
    wide = reshaper(portrait.transpose(2, 3), score_map=scores.transpose(1, 2))
    assert tall.warped_pixel_values.shape == (2, 3, 48, 24) and tall.row_edges.shape == (2, 7)
    torch.testing.assert_close(wide.row_edges, tall.col_edges, atol=1e-9, rtol=0)
    torch.testing.assert_close(wide.col_edges, tall.row_edges, atol=1e-9, rtol=0)
    torch.testing.assert_close(wide.warped_pixel_values, tall.warped_pixel_values.transpose(2, 3), atol=1e-5, rtol=0)
    assert not torch.allclose(tall.row_edges, torch.linspace(0, 96, 7, dtype=tall.row_edges.dtype).expand(2, -1))
    with pytest.raises(ValueError, match=r"score_map.*\(2, 6, 3\)"):
        reshaper(portrait, score_map=scores.transpose(1, 2))
    uniform = reshaper(portrait)
    assert uniform.score_map.shape == (2, 6, 3) and torch.equal(uniform.warped_pixel_values, portrait[:, :, ::2, ::2])


def test_a_per_cell_grid_equal_to_the_fixed_grid_warps_alike():
    """Where the warped cells number `score_grid_size` on both sides, the per-cell grid is the fixed grid: same
    scores, same warp (a learned scorer)."""
    kwargs = dict(scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4, score_grid_size=4, patch_size=8)
    torch.manual_seed(0)
    fixed = DartImageReshaper(**kwargs).eval()
    per_cell = DartImageReshaper(score_grid_per_cell=True, **kwargs).eval()
    per_cell.load_state_dict(fixed.state_dict())
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        a, b = fixed(x), per_cell(x)
    assert torch.equal(a.score_map, b.score_map) and torch.equal(a.warped_pixel_values, b.warped_pixel_values)
    with torch.no_grad():  # at 128x64 the per-cell map is 8x4, the fixed one stays 4x4
        assert per_cell(torch.randn(1, 3, 128, 64)).score_map.shape == (1, 8, 4)
        assert fixed(torch.randn(1, 3, 128, 64)).score_map.shape == (1, 4, 4)


def test_a_per_cell_grid_is_refused_with_the_saliency_head_and_kept_by_the_config():
    from modeling_dart import DartReshaperConfig

    with pytest.raises(ValueError, match="score_grid_per_cell"):
        DartImageReshaper(scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4, scorer_head="saliency",
                          score_grid_size=4, patch_size=8, score_grid_per_cell=True)
    with pytest.raises(ValueError, match="score_grid_per_cell"):
        segmentation_config(scorer="learned", scorer_head="saliency", score_grid_per_cell=True)
    with pytest.raises(TypeError, match="score_grid_per_cell"):
        segmentation_config(score_grid_per_cell="yes")
    config = segmentation_config(score_grid_per_cell=True)
    again = DartReshaperConfig.from_dict(config.to_dict())
    assert again.score_grid_per_cell is True and again.reshaper_kwargs()["score_grid_per_cell"] is True
    model = segmenter(config)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 64))
    assert out.score_map.shape == (1, 6, 4) and out.logits.shape == (1, 4, 96, 64)


def test_the_loss_on_the_input_grid_compares_the_logits_warped_back_with_the_labels_as_given(tmp_path):
    """`segmentation_loss_grid="input"`: with the uniform warp, the loss is the cross-entropy of the warped logits
    unwarped by hand against the labels (ignore index skipped); with a learned warp it reaches the scorer head and
    differs from the warped-grid loss of the same weights; the field is checked and saved."""
    from modeling_dart import DartReshaperConfig, DartReshaperForSemanticSegmentation

    x, labels = pixels(batch=2, seed=6), label_maps(batch=2, seed=7)
    model = segmenter(segmentation_config("convnext", segmentation_loss_grid="input")).train()
    out = model(x, labels=labels)
    by_hand = uniform_unwarp_by_hand(out.warped_logits)
    kept = labels != IGNORE
    log_probs = by_hand.log_softmax(dim=1).gather(1, labels.clamp(max=len(LABELS) - 1)[:, None])[:, 0]
    assert torch.allclose(out.loss, -log_probs[kept].mean(), atol=1e-5)

    learned = learned_segmentation_config("convnext", segmentation_loss_grid="input")
    model = segmenter(learned).train()
    out = model(x, labels=labels)
    out.loss.backward()
    assert model.reshaper.scorer.head.fc1.weight.grad is not None
    assert model.reshaper.scorer.head.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.auxiliary_head.parameters())  # no auxiliary loss added
    warped_grid = DartReshaperForSemanticSegmentation(learned_segmentation_config("convnext")).train()
    warped_grid.load_state_dict(model.state_dict())
    assert not torch.allclose(warped_grid(x, labels=labels).loss, out.loss)

    with pytest.raises(ValueError, match="segmentation_loss_grid"):
        segmentation_config("convnext", segmentation_loss_grid="output")
    model.save_pretrained(tmp_path)
    assert DartReshaperConfig.from_pretrained(tmp_path).segmentation_loss_grid == "input"
