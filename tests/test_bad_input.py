"""Bad input gets a clear TypeError/ValueError that names the argument and what was expected."""

from __future__ import annotations

import pytest
import torch

from modeling_dart import DartConfig, DartForImageClassification
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DartForImageClassification(tiny_config()).eval()


@pytest.mark.parametrize(
    "pixel_values,error,match",
    [
        (torch.randn(2, 4, 64, 64), ValueError, r"3 channels"),
        (torch.randn(2, 1, 64, 64), ValueError, r"3 channels"),
        (torch.randn(3, 64, 64), ValueError, r"\(batch, 3, height, width\).*3-D"),
        (torch.randn(1, 2, 3, 64, 64), ValueError, r"5-D"),
        (torch.randn(0, 3, 64, 64), ValueError, r"empty batch"),
        (torch.randn(1, 3, 7, 64), ValueError, r"at least 8x8"),
        (torch.randn(1, 3, 64, 4), ValueError, r"at least 8x8"),
        (torch.full((1, 3, 64, 64), float("nan")), ValueError, r"NaN or infinite"),
        (torch.full((1, 3, 64, 64), float("inf")), ValueError, r"NaN or infinite"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, r"floating-point"),
        ([[0.0] * 64] * 64, TypeError, r"torch.Tensor"),
        (None, ValueError, r"pixel_values"),
    ],
)
def test_bad_pixel_values(model, pixel_values, error, match):
    with pytest.raises(error, match=match):
        model(pixel_values)


def test_one_nan_pixel_is_caught(model):
    x = torch.randn(2, 3, 64, 64)
    x[1, 2, 10, 10] = float("nan")
    with pytest.raises(ValueError, match="pixel_values.*NaN"):
        model(x)


@pytest.mark.parametrize(
    "num_tokens,error",
    [(0, ValueError), (-3, ValueError), (10**6, ValueError), (2.5, TypeError), ("16", TypeError), (True, TypeError)],
)
def test_bad_num_tokens(model, num_tokens, error):
    with pytest.raises(error, match="num_tokens"):
        model(torch.randn(1, 3, 64, 64), num_tokens=num_tokens)


def test_bad_score_normalization_argument(model):
    with pytest.raises(ValueError, match="score_normalization"):
        model(torch.randn(1, 3, 64, 64), score_normalization="layer")


@pytest.mark.parametrize(
    "field,value",
    [
        ("backbone", "resnet"),
        ("scorer_trunk", "mobilenet_v2"),
        ("scorer_head", "v3"),
        ("score_normalization", "global"),
        ("cls_token_position", "tail"),
        ("video_score_pooling", "max"),
        ("hidden_size", 0),
        ("hidden_size", 32.0),
        ("num_hidden_layers", -1),
        ("num_tokens", 0),
        ("num_tokens", 10**6),
        ("patch_size", 0),
        ("image_size", 4),
        ("num_attention_heads", 5),
        ("hidden_dropout_prob", 1.5),
        ("drop_path_rate", -0.1),
        ("layer_norm_eps", 0),
        ("state_size", 0),
        ("time_step_rank", "big"),
        ("tubelet_size", 2),
        ("num_frames", 0),
        ("scorer_trunk_depth", 1),
        ("scorer_trunk_depth", 14),  # MobileNetV3-Small has 13 `features` entries
        ("scorer_trunk_depth", 4.0),
        ("hidden_act", None),
        ("hidden_act", "gleu"),
        ("scorer_trunk", []),
    ],
)
def test_invalid_config_values(field, value):
    # the video fields belong to the video family's config
    backbone = "videomamba" if field in ("video_score_pooling", "tubelet_size", "num_frames") else "vit"
    with pytest.raises(ValueError, match=field):
        tiny_config(**{"backbone": backbone, field: value})


def test_config_defaults_follow_the_backbone():
    assert DartConfig(backbone="vim").cls_token_position == "middle"
    assert DartConfig(backbone="vim").bidirectional_divide_out is True
    assert DartConfig(backbone="videomamba").cls_token_position == "head"
    assert DartConfig(backbone="videomamba").bidirectional_divide_out is False
    assert DartConfig(hidden_size=384, num_attention_heads=6).time_step_rank == 24


# --------------------------------------------------------------------------------------- RMT and the image reshaper
# (issue #25, item 9; found by tests/bad_input_probes.py --only reshaper,reshaper_converters)
def _rmt(num_labels=3):
    from modeling_dart import RmtConfig, RmtForImageClassification

    torch.manual_seed(0)
    config = RmtConfig(embed_dims=[8, 16], depths=[1, 1], num_heads=[2, 2], init_values=[2, 2], heads_ranges=[4, 6],
                       mlp_ratios=[2, 2], chunkwise_recurrents=[True, False], layerscales=[False, False],
                       projection=16, num_labels=num_labels, drop_path_rate=0.0)
    return RmtForImageClassification(config).eval()


@pytest.mark.parametrize(
    "labels,error,match",
    [
        (torch.tensor([0, 3]), ValueError, r"`labels` must be class indices in \[0, 3\).*got 3"),
        (torch.tensor([0, -2]), ValueError, r"`labels` must be class indices in \[0, 3\).*got -2"),
        (torch.tensor([0, 1, 2]), ValueError, r"`labels` must have one entry per image \(batch size 2\)"),
        ([0, 1], TypeError, r"`labels` must be a torch.Tensor, got list"),
        (torch.tensor([1.0, 0.0]), ValueError, r"`labels` for multi label classification must have shape \(2, 3\)"),
        (torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]), ValueError, r"`labels` for multi-label.*\[0, 1\]"),
    ],
)
def test_rmt_classifier_checks_its_labels(labels, error, match):
    # the loss took them unchecked: IndexError 'Target 3 is out of bounds', AttributeError for a list
    model = _rmt()
    with pytest.raises(error, match=match), torch.no_grad():
        model(torch.randn(2, 3, 32, 32), labels=labels)
    assert model.config.problem_type is None  # a refused call does not fix the problem type


def test_rmt_classifier_loss_with_valid_labels_is_cross_entropy():
    model = _rmt()
    x, labels = torch.randn(2, 3, 32, 32), torch.tensor([2, -100])
    with torch.no_grad():
        out = model(x, labels=labels)
        logits = model(x).logits
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits[:1], labels[:1]))


def test_rmt_without_a_classifier_refuses_labels():
    model = _rmt(num_labels=0)
    with pytest.raises(ValueError, match=r"`labels` need a classifier.*num_labels` is 0"), torch.no_grad():
        model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_rmt_refuses_non_finite_pixels(value):
    from modeling_dart import RmtBackbone

    model = _rmt()
    x = torch.randn(2, 3, 32, 32)
    x[1, 0, 5, 7] = value  # one pixel: the logits of that image were NaN, silently
    with pytest.raises(ValueError, match=r"`pixel_values` contains NaN or infinite values"), torch.no_grad():
        model(x)
    with pytest.raises(ValueError, match=r"`pixel_values` contains NaN"), torch.no_grad():
        RmtBackbone(model.config)(x)


def test_rmt_refuses_an_empty_side():
    # the stem's convolution failed with "Kernel size can't be greater than actual input size"
    model = _rmt()
    with pytest.raises(ValueError, match=r"`pixel_values` images must be at least 1x1 pixels, got 0x8"):
        model(torch.randn(1, 3, 0, 8))


def test_rmt_takes_float64_pixels_as_float32():
    # was "RuntimeError: Input type (double) and bias type (float) should be the same"; the token models take it
    model, x = _rmt(), torch.randn(1, 3, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()).logits, model(x).logits)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda f: f.rmt_rotary_angles(3), r"`key_dim` must be a positive even integer.*got 3"),  # gave 2 angles
        (lambda f: f.rmt_rotary_angles(-4), r"`key_dim` must be a positive even integer"),
        (lambda f: f.rmt_rotary_angles(8, 0.0), r"`rope_theta` must be a positive finite number, got 0.0"),
        (lambda f: f.rmt_decay_rates(0, 2, 4), r"`num_heads` must be a positive integer, got 0"),  # gave no decays
        (lambda f: f.rmt_decay_rates(2.5, 2, 4), r"`num_heads` must be a positive integer, got 2.5"),
        (lambda f: f.rmt_decay_rates(2, float("nan"), 4), r"`init_value` must be a positive finite number"),
        (lambda f: f.rmt_decay_rates(2, 2, -1), r"`heads_range` must be a positive finite number, got -1"),
    ],
)
def test_rmt_position_tables_refuse_bad_arguments(call, match):
    from modeling_dart import modeling_rmt

    with pytest.raises(ValueError, match=match):
        call(modeling_rmt)


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -1.0])
def test_reshaper_refuses_a_score_map_that_is_not_finite_and_non_negative(fill):
    # NaN / inf gave NaN edges and a NaN warped image; negative scores crossing edges (silently)
    from modeling_dart import DartImageReshaper

    reshaper = DartImageReshaper(scorer="uniform", patch_size=8, score_grid_size=4)
    scores = torch.ones(2, 4, 4)
    scores[1, 2, 1] = fill
    with pytest.raises(ValueError, match=r"`score_map` must hold finite non-negative scores"):
        reshaper(torch.randn(2, 3, 64, 64), score_map=scores)
    zero = reshaper(torch.randn(2, 3, 64, 64), score_map=torch.zeros(2, 4, 4))  # the uniform warp, as documented
    torch.testing.assert_close(zero.row_edges, torch.tensor([[0.0, 16, 32, 48, 64]] * 2))


def _edges():
    return torch.tensor([[0.0, 10.0, 64.0]])


@pytest.mark.parametrize(
    "call,error,match",
    [
        # patch size 0: "index -9223372036854775808 is out of bounds"; negative: mirrored coordinates, silently
        (lambda r: r.warped_to_input(torch.zeros(1, 4), _edges(), 0), ValueError, r"`patch_size` must be a positive"),
        (lambda r: r.warped_to_input(torch.zeros(1, 4), _edges(), -8), ValueError, r"`patch_size` must be a positive"),
        (lambda r: r.input_to_warped(torch.zeros(1, 4), _edges(), 0), ValueError, r"`patch_size` must be a positive"),
        # positions of another batch / rank: torch's gather errors
        (lambda r: r.warped_to_input(torch.zeros(2, 4), _edges(), 8), ValueError,
         (r"`positions` must be a tensor of shape \(batch, num_positions\) with the batch of `edges` \(1\), "
          r"got \(2, 4\)")),
        (lambda r: r.input_to_warped(torch.zeros(4), _edges(), 8), ValueError, r"`positions` must be a tensor"),
        (lambda r: r.warped_to_input([0.0, 1.0], _edges(), 8), ValueError, r"`positions` must be a tensor.*got list"),
        # the inverse of decreasing or NaN edges was 8.0 everywhere / 0.0 everywhere, silently
        (lambda r: r.input_to_warped(torch.arange(4.0)[None] * 10, _edges().flip(1), 8), ValueError,
         r"`edges` must hold finite edges that never decrease"),
        (lambda r: r.input_to_warped(torch.zeros(1, 4), torch.full((1, 3), float("nan")), 8), ValueError,
         r"`edges` must hold finite edges"),
        (lambda r: r.unwarp(torch.zeros(1, 2, 16, 16), torch.full((1, 3), float("nan")), _edges(), 8, 64, 64),
         ValueError, r"`row_edges` must hold finite edges"),
        (lambda r: r.unwarp(torch.zeros(1, 2, 16, 16), _edges(), _edges(), 8, 0, 64), ValueError,
         r"`height` must be a positive integer, got 0"),  # an empty map, silently
        (lambda r: r.unwarp(torch.zeros(1, 2, 16, 16), _edges(), _edges(), 8, 64, 64.5), ValueError,
         r"`width` must be a positive integer, got 64.5"),
        (lambda r: r.unwarp(torch.zeros(1, 2, 16, 16), _edges(), _edges(), 0, 64, 64), ValueError,
         r"`patch_size` must be a positive integer"),  # ZeroDivisionError
        (lambda r: r.sample_separable(torch.zeros(1, 2, 16, 16), torch.zeros(1, 4), torch.zeros(1, 4), "cubic"),
         ValueError, r"`mode` must be one of \('bilinear', 'nearest'\), got 'cubic'"),  # read as bilinear
        (lambda r: r.map_coordinates(torch.zeros(1, 4), 0, 16), ValueError, r"`warped_size` must be a positive"),
        (lambda r: r.uniform_edges(1, 0, 64, torch.float32), ValueError, r"`num_parts` must be a positive"),  # [nan]
        (lambda r: r.marginal_quantile_cuts(torch.full((4, 4), 1 / 16), 2, 2), ValueError,
         r"`pdf` must be a tensor of shape \(batch, grid_rows, grid_cols\), got \(4, 4\)"),
        (lambda r: r.marginal_quantile_cuts(torch.full((1, 4, 4), 1 / 16), 0, 2), ValueError,
         r"`num_rows` must be a positive integer, got 0"),
        (lambda r: r.warp_labels(torch.zeros(1, 64, 64, dtype=torch.long), _edges(),
                                 torch.tensor([[0.0, 30, 64, 100, 128]]), 2, 0), ValueError,
         r"`patch_size` must be a positive integer, got 0"),  # an empty label map
        (lambda r: r.warp_pixels(torch.zeros(1, 3, 64, 64), _edges(), torch.tensor([[0.0, 30, 64, 100, 128]]), 2, 8,
                                 "rows"), ValueError, r"`column_sampling` must be one of"),  # read as "band"
        (lambda r: r.warp_pixels(torch.zeros(2, 3, 64, 64), _edges(), torch.tensor([[0.0, 30, 64, 100, 128]]), 2, 8),
         ValueError, r"The warp does not fit `pixel_values` of shape \(2, 3, 64, 64\)"),
        (lambda r: r.warp_pixels(torch.zeros(1, 3, 64, 64), _edges(), torch.tensor([[0.0, 30, 64, 100, 128]]), 3, 8),
         ValueError, (r"row_edges \(1, 3\) and edges \(1, 5\) must be \(1, num_rows \+ 1\) and "
                      r"\(1, num_rows \* 3 \+ 1\)")),
    ],
)
def test_reshaper_geometry_refuses_bad_arguments(call, error, match):
    from modeling_dart import reshaper_dart

    with pytest.raises(error, match=match):
        call(reshaper_dart)


def test_reshaper_inverse_map_accepts_cells_of_zero_size():
    # edges that repeat (an empty cell) are ordered: the inverse skips the empty cell, as documented
    from modeling_dart.reshaper_dart import input_to_warped

    warped = input_to_warped(torch.tensor([[0.0, 5.0, 20.0, 40.0]]), torch.tensor([[0.0, 10.0, 10.0, 40.0]]), 8)
    torch.testing.assert_close(warped, torch.tensor([[0.0, 4.0, 16.0 + 8 * 10 / 30, 24.0]]))


def _rmt_stage0(decay):
    return {"layers.0.blocks.0.retention_layer_norm.weight": torch.ones(8),
            "layers.0.blocks.0.ffn.fc1.weight": torch.zeros(16, 8), "layers.0.Relpos.decay": decay}


@pytest.mark.parametrize(
    "decay,match",
    [
        (torch.zeros(0), r"layers\.0\.Relpos\.decay is empty: it must hold one log decay per head"),  # IndexError
        # rounded to float16, the reduced darmt checkpoint's decays read as heads_ranges [6, 6, 5.999, 5.997]
        (torch.tensor([-0.2877, -0.0317]).half(), r"layers\.0\.Relpos\.decay is stored as torch.float16.*float32"),
    ],
)
def test_rmt_converter_refuses_decays_it_cannot_read(decay, match):
    from conversion.convert_rmt_original import infer_rmt_config
    from modeling_dart.conversion_utils import ConversionError

    with pytest.raises(ConversionError, match=match):
        infer_rmt_config(_rmt_stage0(decay))


@pytest.mark.parametrize("typo,field", [("embed_dim", "embed_dims"), ("heads_range", "heads_ranges"),
                                        ("layerscale", "layerscales"), ("rope_thetas", "rope_theta")])
def test_rmt_config_warns_about_a_near_miss_keyword(typo, field):
    # RmtConfig.from_preset("t3", embed_dim=[...]) gave T3's widths and kept `embed_dim` as an unused attribute
    from modeling_dart import RmtConfig

    with pytest.warns(UserWarning, match=rf"unknown argument `{typo}` .*did you mean `{field}`"):
        RmtConfig.from_preset("t3", **{typo: 1})


def test_rmt_config_does_not_warn_about_transformers_keywords(recwarn):
    from modeling_dart import RmtConfig

    config = RmtConfig(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, problem_type="single_label_classification")
    RmtConfig.from_dict(config.to_dict())
    assert not [w for w in recwarn if "unknown argument" in str(w.message)]
