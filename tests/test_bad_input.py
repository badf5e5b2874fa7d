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
