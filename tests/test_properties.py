"""Property-based tests (hypothesis) over the config fields, the partition math and the image processor.

Each property states what must hold for every input of a kind, including the degenerate ones: a config value either
builds a model whose forward is finite or raises `ValueError` / `TypeError`; any non-negative score map gives a valid
partition; any PIL image gives finite pixel values of the right shape or a `ValueError` / `TypeError`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from functools import cache

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modeling_dart import (
    DartConfig,
    DartForImageClassification,
    DartImageProcessor,
    DartVideoConfig,
    DartVideoMambaForVideoClassification,
)
from modeling_dart.embeddings_dart import DartEmbeddings
from modeling_dart.partition_dart import piecewise_linear_quantiles, score_density
from tests.conftest import tiny_config


def fast(max_examples: int) -> settings:
    """Hypothesis settings: a fixed number of examples, derandomised (the same examples on every run), no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------- config fields

CONFIG_FIELDS = sorted(
    name
    for cls in (DartConfig, DartVideoConfig)
    for name, parameter in inspect.signature(cls.__init__).parameters.items()
    if name != "self" and parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
)
NAMED_CHOICES = ["vit", "vim", "videomamba", "learned", "uniform", "mobilenet_v3_small", "mobilenet_v3_large",
                 "efficientnet_lite0", "v1", "v2", "saliency", "mil", "image", "batch", "head", "middle", "frame", "clip",
                 "auto", "gelu", "relu", "silu", "true", "false", "1", ""]

CHOICES = {**DartConfig._choices(), **DartVideoConfig._choices(), "backbone": ("vit", "vim", "videomamba")}
ANY_VALUE = st.one_of(
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1.0, 2.0),
    st.sampled_from(NAMED_CHOICES),
    st.text(max_size=6),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 4), max_size=3),
)


def _plausible(name: str) -> st.SearchStrategy:
    """Values of the field's own kind (its choices, or the type of its default), so that many examples build a
    model; they may still break a relation between fields."""
    if name in CHOICES:
        return st.sampled_from(CHOICES[name])
    default = next(cls for cls in (DartConfig, DartVideoConfig) if name in inspect.signature(cls.__init__).parameters)
    default = inspect.signature(default.__init__).parameters[name].default
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, float):
        return st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.floats(1e-6, 1e6))
    return st.one_of(st.integers(1, 40), st.just(default))


def config_fields() -> st.SearchStrategy:
    """One or two fields, each with a value of its own kind or of any kind."""
    name = st.sampled_from(CONFIG_FIELDS)
    # two draws in three of the field's own kind
    values = {key: st.one_of(_plausible(key), _plausible(key), ANY_VALUE) for key in CONFIG_FIELDS}
    return st.dictionaries(name, st.just(None), min_size=1, max_size=2).flatmap(
        lambda fields: st.fixed_dictionaries({key: values[key] for key in fields})
    )


def _forward(config: DartConfig) -> torch.Tensor:
    """Logits of a model built from `config` on one random input of 48x48 pixels (a clip of at most 3 frames for
    video: a video model's cost grows with its frames)."""
    torch.manual_seed(0)
    channels = config.num_channels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(config, DartVideoConfig):
            model = DartVideoMambaForVideoClassification(config).eval()
            pixels = torch.rand(1, min(config.num_frames, 3), channels, 48, 48)
        else:
            model = DartForImageClassification(config).eval()
            pixels = torch.rand(1, channels, 48, 48)
        with torch.no_grad():
            return model(pixels).logits


@fast(80)
@given(config_fields())
def test_every_config_value_builds_a_finite_model_or_is_refused(fields):
    """Small integers keep the model tiny; every other kind of value (floats, NaN, strings, bools, None, lists) is
    tried too. A refusal names the field (in backquotes), at construction or when the model is built."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = tiny_config(**{"num_hidden_layers": 1, **fields})
    except (ValueError, TypeError) as err:
        event("refused by the config")
        assert "`" in str(err), (fields, err)
        return
    try:
        logits = _forward(config)
    except (ValueError, TypeError) as err:
        event("refused by the model")
        assert "`" in str(err), (fields, err)
        return
    event("ran")
    assert torch.isfinite(logits).all(), (fields, logits)


# ---------------------------------------------------------------------------------------------- partition math


@cache
def _embeddings(grid: int) -> DartEmbeddings:
    torch.manual_seed(0)
    config = tiny_config(scorer="uniform", image_size=8 * grid, patch_size=8, score_grid_size=grid, num_tokens=1)
    return DartEmbeddings(config).eval()


TINY32, HUGE32 = float(np.float32(1e-45)), float(np.float32(3e38))  # the smallest subnormal, near the largest


@st.composite
def score_maps(draw, grid: int) -> np.ndarray:
    """Non-negative float32 maps of shape `(grid, grid)`: random magnitudes over the whole float32 range, constants,
    one-hot maps, all zero, and maps with empty rows."""
    kind = draw(st.sampled_from(["random", "constant", "one-hot", "zero", "empty rows"]))
    if kind == "constant":
        return np.full((grid, grid), draw(st.floats(TINY32, HUGE32, width=32)), np.float32)
    if kind in ("one-hot", "zero"):
        scores = np.zeros((grid, grid), np.float32)
        if kind == "one-hot":
            row, col = draw(st.integers(0, grid - 1)), draw(st.integers(0, grid - 1))
            scores[row, col] = draw(st.floats(TINY32, HUGE32, width=32))
        return scores
    exponents = draw(hnp.arrays(np.float32, (grid, grid), elements=st.floats(-45, 38, width=32)))
    scores = np.where(draw(hnp.arrays(np.bool_, (grid, grid))), np.float32(0), np.power(10, exponents))
    if kind == "empty rows":
        scores[draw(st.integers(0, grid - 1)):] = 0
    return scores.astype(np.float32)


def _check_cuts(edges: torch.Tensor, total: float, name: str, atol: float):
    assert torch.isfinite(edges).all(), (name, edges)
    assert torch.all(edges[:, 0] == 0), (name, edges)
    assert abs(float(edges[0, -1]) - total) <= atol, (name, edges)
    assert torch.all(edges[:, 1:] > edges[:, :-1]), (name, edges)


@fast(120)
@given(st.data())
def test_score_maps_give_a_valid_partition(data):
    """Rows cover the image height and tokens the strip of all rows: finite, from 0 to the total, strictly
    increasing; the tokens, positions and boxes are finite, the boxes inside the image."""
    grid = data.draw(st.integers(1, 5), label="grid")
    scores = data.draw(score_maps(grid), label="scores")
    num_tokens = data.draw(st.integers(1, 16 * grid * grid), label="num_tokens")
    height, width = data.draw(st.integers(8, 72), label="height"), data.draw(st.integers(8, 72), label="width")
    num_rows = max(1, round(math.sqrt(num_tokens)))
    with torch.no_grad():
        out = _embeddings(grid)(torch.rand(1, 3, height, width), num_tokens=num_tokens,
                                score_map=torch.from_numpy(scores)[None])
    _check_cuts(out.row_edges, float(height), "row_edges", atol=1e-3)
    _check_cuts(out.token_edges, float(width * num_rows), "token_edges", atol=1e-2)
    for name in ("embeddings", "patch_tokens", "position_embeddings", "regions"):
        assert torch.isfinite(getattr(out, name)).all(), name
    boxes = out.regions[0]
    assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= width + 1e-3)
    assert torch.all(boxes[:, 1] >= 0) and torch.all(boxes[:, 3] <= height + 1e-3)


@fast(300)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 40)),
                  elements=st.one_of(st.just(0.0), st.floats(0.0, 1e300), st.floats(1e-300, 1.0))),
       st.integers(1, 200))
def test_quantiles_of_any_density_are_valid_cuts(scores, parts):
    """Any non-negative scores (all zero included), normalised by `score_density`, cut into `parts` strictly
    increasing edges from 0 to the number of cells."""
    density = score_density(torch.from_numpy(scores / max(scores.max(), 1e-300)))
    assert torch.isfinite(density).all()
    torch.testing.assert_close(density.sum(dim=-1), torch.ones(scores.shape[0], dtype=torch.float64), atol=1e-9,
                               rtol=0)
    _check_cuts(piecewise_linear_quantiles(density, parts), float(scores.shape[1]), "edges", atol=1e-9)


# --------------------------------------------------------------------------------------------- image processor

MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV", "LAB", "I", "F",
         "I;16", "I;16B", "I;16L", "I;16N"]
PROCESSOR = DartImageProcessor(size={"shortest_edge": 12}, crop_size={"height": 12, "width": 12})


@st.composite
def pil_images(draw) -> PIL.Image.Image:
    """A PIL image of a random mode and size (1x1 and one-pixel-thin included), with random values in the mode's
    range, or beyond it for the modes without a fixed one (`I`, `F`)."""
    mode = draw(st.sampled_from(MODES))
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    if mode.startswith("I;16"):
        values = draw(hnp.arrays(np.uint16, (height, width)))
        return PIL.Image.fromarray(values).convert(mode) if mode != "I;16" else PIL.Image.fromarray(values)
    if mode == "I":
        return PIL.Image.fromarray(draw(hnp.arrays(np.int32, (height, width), elements=st.integers(-5, 300))))
    if mode == "F":
        elements = st.floats(-2.0, 300.0, width=32)
        return PIL.Image.fromarray(draw(hnp.arrays(np.float32, (height, width), elements=elements)))
    rgba = PIL.Image.fromarray(draw(hnp.arrays(np.uint8, (height, width, 4))))
    return (rgba.convert("LA") if mode == "La" else rgba).convert(mode)


@fast(300)
@given(pil_images(), st.booleans(), st.booleans())
def test_any_pil_image_gives_finite_pixels_or_a_clear_error(image, do_convert_rgb, do_rescale):
    try:
        out = PROCESSOR(image, do_convert_rgb=do_convert_rgb, do_rescale=do_rescale, do_normalize=do_convert_rgb,
                        return_tensors="np")["pixel_values"]
    except (ValueError, TypeError) as err:
        assert "`images`" in str(err), err
        return
    channels = 3 if do_convert_rgb else len(image.getbands())
    assert out.shape == (1, channels, 12, 12) and out.dtype == np.float32, (image.mode, out.shape)
    assert np.isfinite(out).all()


SINGLE_BAND = {"1": (np.bool_, 1), "L": (np.uint8, 255), "I": (np.int32, 255), "F": (np.float32, 255),
               "I;16": (np.uint16, 65535), "I;16B": (np.dtype(">u2"), 65535)}


@st.composite
def single_band_images(draw) -> tuple[PIL.Image.Image, np.ndarray]:
    """A one-band PIL image with values in its mode's range, and those values as fractions of the range."""
    mode = draw(st.sampled_from(sorted(SINGLE_BAND)))
    dtype, top = SINGLE_BAND[mode]
    shape = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    if mode == "F":
        values = draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 255, width=32)))
        assume(values.max() > 1 or values.max() == 0)  # [0, 1] floats are refused with do_rescale=True
    elif mode == "1":
        values = draw(hnp.arrays(np.bool_, shape))
    else:
        values = draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))
    image = PIL.Image.fromarray(values)
    assert image.mode == mode
    return image, values.astype(np.float64) / top


@fast(200)
@given(single_band_images(), st.booleans())
def test_single_band_images_are_read_on_their_modes_range(image_and_expected, do_convert_rgb):
    """Without resizing, each pixel comes out as its value's fraction of the mode's range (0..1 for mode 1, 0..255
    for L, I and F, 0..65535 for the 16-bit modes), in every channel."""
    image, expected = image_and_expected
    out = PROCESSOR(image, do_convert_rgb=do_convert_rgb, do_resize=False, do_center_crop=False, do_normalize=False,
                    return_tensors="np")["pixel_values"][0]
    assert out.shape == (3 if do_convert_rgb else 1, *expected.shape)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_converts_to_rgb(mode):
    """Each PIL mode, on a fixed 2x3 image within its range, gives finite RGB pixel values."""
    rgba = PIL.Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10)
    if mode.startswith("I;16"):
        image = PIL.Image.fromarray(np.array([[0, 1000, 65535]] * 2, np.uint16)).convert(mode)
    elif mode in ("I", "F"):
        image = PIL.Image.fromarray(np.array([[0, 100, 255]] * 2, np.int32 if mode == "I" else np.float32))
    else:
        image = (rgba.convert("LA") if mode == "La" else rgba).convert(mode)
    out = PROCESSOR(image, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 12, 12) and np.isfinite(out).all()
