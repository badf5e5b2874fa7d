"""Tests for the DART image processor (PIL backend) and the training augmentation helper."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch

from modeling_dart.configuration_dart import DartConfig
from modeling_dart.image_processing_dart import (
    DartImageProcessor,
    DartImageProcessorPil,
    DartTrainTransform,
    random_resized_crop_and_flip,
    register_image_processor,
)


MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def reference_eval_transform(image: PIL.Image.Image, short: int = 512, crop: int = 448) -> np.ndarray:
    """The DeiT evaluation recipe written directly with PIL (as torchvision's Resize(512) + CenterCrop(448) +
    ToTensor + Normalize do it on a PIL image). Returns (3, crop, crop) float32."""
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    image = image.resize((new_w, new_h), PIL.Image.BICUBIC)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    x = np.asarray(image, dtype=np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def smooth_image(height: int, width: int, seed: int = 0, lo: int = 0, hi: int = 255) -> np.ndarray:
    """A deterministic, moderately textured uint8 (H, W, 3) image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.08), rng.uniform(0, 6.3)
        channels.append(0.5 + 0.5 * np.sin(fx * xx + fy * yy + phase))
    img = np.stack(channels, -1)
    return np.round(lo + (hi - lo) * img).astype(np.uint8)


@pytest.fixture(scope="module")
def processor():
    return DartImageProcessor()


@pytest.fixture(scope="module")
def chelsea():
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.chelsea()  # (300, 451, 3) uint8, a real photo


# ---------------------------------------------------------------------------------------------- defaults / output


def test_plain_name_is_the_pil_class(processor):
    assert DartImageProcessor is DartImageProcessorPil
    assert processor.backend == "pil"
    assert processor.model_input_names == ["pixel_values"]
    assert dict(processor.size) == {"shortest_edge": 512}
    assert dict(processor.crop_size) == {"height": 448, "width": 448}
    assert processor.resample == PIL.Image.BICUBIC
    assert tuple(processor.image_mean) == (0.485, 0.456, 0.406)
    assert tuple(processor.image_std) == (0.229, 0.224, 0.225)
    assert processor.do_convert_rgb is True


def test_output_shape_and_dtype(processor):
    images = [PIL.Image.fromarray(smooth_image(300, 400, seed=s)) for s in range(3)]
    out = processor(images, return_tensors="pt")
    assert list(out.keys()) == ["pixel_values"]
    assert out["pixel_values"].shape == (3, 3, 448, 448)
    assert out["pixel_values"].dtype == torch.float32
    # return_tensors=None: a list of float32 (3, 448, 448) arrays
    listed = processor(images[0])["pixel_values"]
    assert isinstance(listed, list) and listed[0].shape == (3, 448, 448) and listed[0].dtype == np.float32
    # float32 even with rescale and normalise both off
    raw = processor(images[0], do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
    assert raw.dtype == torch.float32 and raw.max() > 1


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("height,width", [(300, 400), (640, 333), (512, 512), (100, 90), (1000, 515)])
def test_matches_independent_pil_recipe(processor, height, width):
    image = PIL.Image.fromarray(smooth_image(height, width, seed=height + width))
    out = processor(image, return_tensors="pt")["pixel_values"][0].numpy()
    np.testing.assert_allclose(out, reference_eval_transform(image), atol=1e-5, rtol=0)


def test_real_photo_chelsea(processor, chelsea):
    out = processor(chelsea, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 448, 448)
    np.testing.assert_allclose(out[0].numpy(), reference_eval_transform(PIL.Image.fromarray(chelsea)), atol=1e-5)
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD
    per_channel = out[0].reshape(3, -1).numpy()
    assert (per_channel.min(1) >= lo - 1e-5).all() and (per_channel.max(1) <= hi + 1e-5).all()
    # a real photo uses most of the range, and its channels differ
    assert (per_channel.max(1) - per_channel.min(1) > 2.0).all()


def test_center_crop_rounds_offsets_like_torchvision(processor):
    # 512 x 515: no resize (shorter side is already 512); the horizontal margin is 67, torchvision's CenterCrop
    # starts at round(33.5) = 34 where floor division would give 33.
    ramp = np.tile((np.arange(515) % 256).astype(np.uint8)[None, :, None], (512, 1, 3))
    out = processor(ramp, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, 448, 448)
    assert out[0, 0, 0].item() == 34 and out[0, 0, -1].item() == (34 + 447) % 256
    # 513 wide: margin 65, round(32.5) = 32 (Python rounds half to even, like torchvision)
    out = processor(ramp[:, :513], do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    assert out[0, 0, 0].item() == 32


def test_small_image_crop_pads_with_zeros():
    proc = DartImageProcessor(do_resize=False)
    image = np.full((100, 201, 3), 255, np.uint8)
    out = proc(image, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    assert out.shape == (3, 448, 448)
    rows = (out[0] > 0).any(1).nonzero().flatten()
    cols = (out[0] > 0).any(0).nonzero().flatten()
    # torchvision pads (448 - 100) // 2 = 174 on top and (448 - 201) // 2 = 123 on the left
    assert (rows[0].item(), rows[-1].item()) == (174, 273)
    assert (cols[0].item(), cols[-1].item()) == (123, 323)


def test_call_time_overrides(processor):
    image = smooth_image(300, 400)
    out = processor(image, size=256, crop_size=224, return_tensors="pt")["pixel_values"]
    assert out.shape == (1, 3, 224, 224)
    expected = reference_eval_transform(PIL.Image.fromarray(image), short=256, crop=224)
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    out = processor(image, size={"height": 448, "width": 448}, do_center_crop=False, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 448, 448)
    kept = processor([image, image[:200]], do_center_crop=False)["pixel_values"]
    assert [k.shape for k in kept] == [(3, 512, 682), (3, 512, 1024)]


# ---------------------------------------------------------------------------------------------- input kinds


def test_grayscale_inputs(processor):
    gray = smooth_image(300, 400)[..., 0]
    expected = reference_eval_transform(PIL.Image.fromarray(gray))
    for image in (PIL.Image.fromarray(gray), gray, gray[None], gray[..., None], torch.from_numpy(gray)):
        out = processor(image, return_tensors="pt")["pixel_values"]
        assert out.shape == (1, 3, 448, 448)
        np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-5)
    assert torch.equal(out[0, 0], out[0, 0])  # all three channels come from the same gray values
    np.testing.assert_allclose(out[0, 0] * STD[0] + MEAN[0], out[0, 1] * STD[1] + MEAN[1], atol=1e-5)


def test_rgba_inputs_composited_on_white(processor):
    rgb = smooth_image(300, 400, seed=3)
    alpha = np.zeros((300, 400), np.uint8)
    alpha[:, 200:] = 255
    alpha[:, 100:200] = 128
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    pil_rgba = PIL.Image.fromarray(rgba)
    white = PIL.Image.new("RGBA", pil_rgba.size, (255, 255, 255, 255))
    expected = reference_eval_transform(PIL.Image.alpha_composite(white, pil_rgba))
    for image in (pil_rgba, rgba, rgba.transpose(2, 0, 1), torch.from_numpy(rgba.transpose(2, 0, 1))):
        out = processor(image, return_tensors="pt")["pixel_values"][0].numpy()
        # PIL's integer alpha compositing may differ from the float formula by one grey level
        np.testing.assert_allclose(out, expected, atol=1.01 / 255 / STD.min())
    # fully transparent left part is white
    left = processor(pil_rgba, do_center_crop=False, return_tensors="pt")["pixel_values"][0, :, :, :100]
    np.testing.assert_allclose(left.numpy(), ((1 - MEAN) / STD)[:, None, None] * np.ones_like(left.numpy()), atol=1e-5)


def test_numpy_and_torch_layouts_agree(processor):
    hwc = smooth_image(300, 400, seed=5)
    expected = processor(PIL.Image.fromarray(hwc), return_tensors="pt")["pixel_values"]
    chw = np.ascontiguousarray(hwc.transpose(2, 0, 1))
    variants = {
        "numpy HWC": hwc,
        "numpy CHW": chw,
        "torch CHW uint8": torch.from_numpy(chw),
        "torch CHW int64": torch.from_numpy(chw).long(),
        "numpy HWC int32": hwc.astype(np.int32),
    }
    for name, image in variants.items():
        out = processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(out, expected), name


def test_float_inputs(processor):
    # mid-range values so that the uint8 path never clips the bicubic overshoot
    hwc = smooth_image(300, 400, seed=6, lo=64, hi=192)
    expected = processor(hwc, return_tensors="pt")["pixel_values"]
    # PIL's 8-bit resize rounds to uint8 after each of its two passes, the float path does not
    tol = 1.5 / 255 / STD.min()
    variants = {
        "float32 HWC 0..255": (hwc.astype(np.float32), {}),
        "float64 CHW 0..255": (hwc.transpose(2, 0, 1).astype(np.float64), {}),
        "float32 HWC 0..1, do_rescale=False": (hwc.astype(np.float32) / 255, {"do_rescale": False}),
        "torch CHW 0..1, do_rescale=False": (torch.from_numpy(hwc).permute(2, 0, 1) / 255, {"do_rescale": False}),
        "torch half": (torch.from_numpy(hwc).permute(2, 0, 1).half(), {}),
        "torch requires_grad": (torch.from_numpy(hwc).permute(2, 0, 1).float().requires_grad_(), {}),
    }
    for name, (image, kwargs) in variants.items():
        out = processor(image, return_tensors="pt", **kwargs)["pixel_values"]
        assert out.dtype == torch.float32, name
        assert (out - expected).abs().max().item() <= tol, name
        assert (out - expected).abs().mean().item() <= 0.3 / 255 / STD.min(), name


def test_float_input_in_unit_range_with_rescale_is_refused(processor):
    """With do_rescale=True floats are on the 0..255 scale; an image within [0, 1] would be divided by 255 again (a
    black image), so it is refused with the way out. An all-zero image is the same on either scale."""
    with pytest.raises(ValueError, match=r"values in \[0.5, 0.5\].*pass do_rescale=False"):
        processor(np.full((64, 64, 3), 0.5, np.float32))
    zeros = processor(np.zeros((8, 8, 3), np.float32), **RAW)["pixel_values"][0]
    assert np.array_equal(zeros, np.zeros((3, 8, 8), np.float32))


def test_batched_inputs(processor, chelsea):
    batch4d = np.stack([smooth_image(300, 400, seed=s) for s in range(2)])
    out = processor(batch4d, return_tensors="pt")["pixel_values"]
    assert out.shape == (2, 3, 448, 448)
    out_t = processor(torch.from_numpy(batch4d).permute(0, 3, 1, 2), return_tensors="pt")["pixel_values"]
    assert torch.equal(out, out_t)
    mixed = [PIL.Image.fromarray(chelsea), chelsea, torch.from_numpy(chelsea).permute(2, 0, 1), chelsea[..., 0]]
    out = processor(mixed, return_tensors="pt")["pixel_values"]
    assert out.shape == (4, 3, 448, 448)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    nested = processor([[chelsea, chelsea], [chelsea]], return_tensors="pt")["pixel_values"]
    assert nested.shape == (3, 3, 448, 448)


def test_path_input(processor, chelsea, tmp_path):
    path = tmp_path / "chelsea.png"
    PIL.Image.fromarray(chelsea).save(path)
    out = processor(str(path), return_tensors="pt")["pixel_values"]
    assert torch.equal(out, processor(chelsea, return_tensors="pt")["pixel_values"])


def test_palette_and_16bit_pil_modes(processor, chelsea):
    pil = PIL.Image.fromarray(chelsea)
    for image in (pil.convert("P"), pil.convert("LA"), pil.convert("CMYK"), pil.convert("I")):
        out = processor(image, return_tensors="pt")["pixel_values"]
        assert out.shape == (1, 3, 448, 448) and torch.isfinite(out).all(), image.mode


RAW = {"do_resize": False, "do_center_crop": False, "do_normalize": False, "return_tensors": "np"}


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16bit_png_keeps_its_gradient(processor, tmp_path, dtype):
    """A 16-bit PNG opens as mode I;16 and is read on its real range, 0..65535 (PIL's own conversion to RGB clips
    at 255: a 0..65535 ramp came out 98% white)."""
    values = np.array([[0, 1, 257, 1285, 13107, 32896, 52428, 65535]] * 2, dtype=dtype)
    path = tmp_path / "gradient16.png"
    PIL.Image.fromarray(values).save(path)
    image = PIL.Image.open(path)
    assert image.mode.startswith("I;16")
    expected = np.array([0, 1 / 65535, 1 / 255, 5 / 255, 0.2, 128 / 255, 0.8, 1.0], np.float32)
    out = processor(image, **RAW)["pixel_values"][0]
    assert out.shape == (3, 2, 8)
    np.testing.assert_allclose(out, np.broadcast_to(expected, (3, 2, 8)), atol=1e-6, rtol=0)
    own = processor(PIL.Image.fromarray(values), do_convert_rgb=False, **RAW)["pixel_values"][0]
    np.testing.assert_allclose(own, np.broadcast_to(expected, (1, 2, 8)), atol=1e-6, rtol=0)


def test_16bit_ramp_through_the_default_pipeline_is_not_clipped(processor):
    """A horizontal 0..65535 ramp, resized and centre-cropped symmetrically: its mean stays 0.5 and almost no pixel
    is white."""
    ramp = np.round(np.linspace(0, 65535, 600)).astype(np.uint16)[None].repeat(500, axis=0)
    out = processor(PIL.Image.fromarray(ramp), do_normalize=False, return_tensors="np")["pixel_values"][0]
    assert out.shape == (3, 448, 448)
    assert abs(float(out.mean()) - 0.5) < 0.01
    assert float((out > 0.999).mean()) < 0.01


def test_32bit_integer_pil_images_are_read_on_the_8bit_scale(processor):
    """Mode I has no fixed range: it is read like an integer array (values in 0..255), and other values are refused
    with the way out (PIL converts 8-bit images to mode I without rescaling them)."""
    gray = smooth_image(40, 30)[..., 0]
    as_int = PIL.Image.fromarray(gray.astype(np.int32))
    assert as_int.mode == "I"
    out = processor(as_int, **RAW)["pixel_values"][0]
    assert np.array_equal(out, processor(PIL.Image.fromarray(gray), **RAW)["pixel_values"][0])
    with pytest.raises(ValueError, match=r"mode 'I'.*\[0, 4095\].*'I;16'"):
        processor(PIL.Image.fromarray(np.array([[0, 4095]], np.int32)))


def test_float_pil_images(processor):
    """Mode F follows the float-array rule: the 0..255 scale with do_rescale=True, as PIL's own conversion to F
    gives; values in [0, 1] are refused there (they came out black), and read as they are with do_rescale=False."""
    unit = np.array([[0.0, 0.25, 0.5, 1.0]] * 3, np.float32)
    image = PIL.Image.fromarray(unit)
    assert image.mode == "F"
    with pytest.raises(ValueError, match=r"\[0, 1\].*do_rescale=False"):
        processor(image)
    out = processor(image, do_rescale=False, **RAW)["pixel_values"][0]
    np.testing.assert_allclose(out, np.broadcast_to(unit, (3, 3, 4)), atol=0, rtol=0)
    scaled = processor(PIL.Image.fromarray(unit * 255), **RAW)["pixel_values"][0]
    np.testing.assert_allclose(scaled, np.broadcast_to(unit, (3, 3, 4)), atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        processor(PIL.Image.fromarray(unit * 2 - 1))


def test_float_arrays_in_minus_one_to_one(processor):
    """[-1, 1] floats are refused with do_rescale=True (they came out constant); with do_rescale=False they are the
    caller's own scale and normalised as they are."""
    image = np.array([[-1.0, -0.5, 0.0, 1.0]] * 2, np.float32)
    with pytest.raises(ValueError, match=r"values in \[-1, 1\].*\(image \+ 1\) / 2.*do_rescale=False"):
        processor(image)
    out = processor(image, do_rescale=False, do_resize=False, do_center_crop=False, return_tensors="np")
    expected = (np.array([-1.0, -0.5, 0.0, 1.0], np.float32) - MEAN[:, None, None]) / STD[:, None, None]
    np.testing.assert_allclose(out["pixel_values"][0], np.broadcast_to(expected, (3, 2, 4)), atol=1e-6, rtol=0)


def test_floats_beyond_the_rescale_range_are_refused(processor):
    with pytest.raises(ValueError, match=r"\[0, 300\].*\[0, 255\]"):
        processor(np.array([[0.0, 300.0]], np.float32))
    # the range follows rescale_factor: a 16-bit float image with rescale_factor=1/65535
    out = processor(np.array([[0.0, 300.0, 65535.0]], np.float32), rescale_factor=1 / 65535, **RAW)
    np.testing.assert_allclose(out["pixel_values"][0], np.broadcast_to([0.0, 300 / 65535, 1.0], (3, 1, 3)),
                               atol=1e-7, rtol=0)


def test_one_bit_pil_images(processor):
    bits = np.array([[True, False, True]])
    image = PIL.Image.fromarray(bits)
    assert image.mode == "1"
    for kwargs, channels in (({}, 3), ({"do_convert_rgb": False}, 1)):
        out = processor(image, **kwargs, **RAW)["pixel_values"][0]
        np.testing.assert_array_equal(out, np.broadcast_to([[1.0, 0.0, 1.0]], (channels, 1, 3)))


def test_training_crop_reads_16bit_images_on_their_range():
    """The whole image, unflipped, at its own size: the 16-bit values rounded to 8 bits (v / 257), not clipped."""
    values = np.array([[0, 257, 1285, 32896, 52428, 65535]] * 4, np.uint16)
    out = random_resized_crop_and_flip(PIL.Image.fromarray(values), (4, 6), scale=(1.0, 1.0), ratio=(1.5, 1.5),
                                       hflip=0.0, rng=0, resample=PIL.Image.NEAREST)
    assert out.mode == "RGB"
    expected = np.array([0, 1, 5, 128, 204, 255], np.uint8)
    np.testing.assert_array_equal(np.asarray(out), np.broadcast_to(expected[None, :, None], (4, 6, 3)))
    with pytest.raises(ValueError, match=r"`image`.*mode 'F'"):
        random_resized_crop_and_flip(PIL.Image.fromarray(np.zeros((4, 6), np.float32)), (4, 6))


@pytest.mark.parametrize("mode,tolerance", [("RGBX", 0), ("CMYK", 0), ("HSV", 1), ("YCbCr", 3), ("LAB", 24),
                                            ("RGBA", 0), ("RGBa", 1), ("P", 0)])
def test_colour_pil_modes_convert_to_their_rgb(processor, mode, tolerance):
    """Primaries, white and black through each mode: the RGB values come back within the mode's own rounding (in
    8-bit levels; PIL's LAB round trip moves pure blue by 22); the palette is PIL's web palette, which holds them."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]], np.uint8)
    out = processor(PIL.Image.fromarray(rgb).convert(mode), **RAW)["pixel_values"][0]
    levels = np.moveaxis(out * 255, 0, -1)
    assert np.abs(levels - rgb).max() <= tolerance + 1e-3, levels


@pytest.mark.parametrize("mode", ["LA", "La", "PA", "RGBA", "RGBa"])
def test_transparent_pil_modes_composite_on_white(processor, mode):
    """A half-transparent black pixel and an opaque one: on white they read 128/255 (127/255 for premultiplied
    modes, which hold the colour rounded) and 0."""
    rgba = PIL.Image.fromarray(np.array([[[0, 0, 0, 128], [0, 0, 0, 255]]], np.uint8))
    image = (rgba.convert("LA") if mode == "La" else rgba).convert(mode)  # PIL's RGBA -> La drops the alpha
    out = processor(image, **RAW)["pixel_values"][0]
    assert out.shape == (3, 1, 2)
    assert np.all(np.abs(out[:, 0, 0] * 255 - 127.5) <= 1) and np.all(out[:, 0, 1] == 0), out


# ---------------------------------------------------------------------------------------------- bad inputs


BAD_INPUTS = {
    "int": (5, TypeError, ["`images`", "builtins.int", "PIL.Image.Image"]),
    "None": (None, TypeError, ["`images` is None"]),
    "empty list": ([], ValueError, ["`images` is an empty list"]),
    "empty batch": (np.zeros((0, 3, 8, 8), np.uint8), ValueError, ["`images` is an empty batch"]),
    "wrong type in list": ([np.zeros((8, 8, 3), np.uint8), 3.5], TypeError, ["`images[1]`", "float"]),
    "2 channels": (np.zeros((32, 32, 2), np.uint8), ValueError, ["`images`", "(32, 32, 2)", "1 (grayscale), 3"]),
    "5 channels CHW": (np.zeros((5, 32, 32), np.uint8), ValueError, ["`images`", "(5, 32, 32)", "channels"]),
    "NaN": (np.full((32, 32, 3), np.nan, np.float32), ValueError, ["`images`", "NaN", "finite"]),
    "inf in list": (
        [np.zeros((8, 8, 3), np.float32), np.full((8, 8, 3), np.inf, np.float32)],
        ValueError,
        ["`images[1]`", "infinite"],
    ),
    "1-D": (np.zeros(10, np.uint8), ValueError, ["`images`", "1 dimensions", "(H, W)"]),
    "5-D": (np.zeros((1, 1, 8, 8, 3), np.uint8), ValueError, ["`images`", "5 dimensions"]),
    "empty image": (np.zeros((0, 32, 3), np.uint8), ValueError, ["`images` is empty", "(0, 32, 3)"]),
    "bool dtype": (np.zeros((8, 8, 3), bool), TypeError, ["`images`", "dtype bool", "uint8"]),
    "16-bit values": (np.full((8, 8, 3), 4095, np.uint16), ValueError, ["`images`", "[4095, 4095]", "[0, 255]"]),
    "missing file": ("/nonexistent/cat.png", ValueError, ["`images`", "could not be loaded", "/nonexistent/cat.png"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_inputs_raise_helpful_errors(processor, name):
    value, error, fragments = BAD_INPUTS[name]
    with pytest.raises(error) as info:
        processor(value, return_tensors="pt")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


BAD_SETTINGS = {
    "image_std with a zero": ({"image_std": [0.2, 0.0, 0.2]}, ValueError, ["`image_std`", "positive"]),
    "image_std negative": ({"image_std": -0.5}, ValueError, ["`image_std`", "positive"]),
    "image_std NaN": ({"image_std": [0.2, float("nan"), 0.2]}, ValueError, ["`image_std`", "finite"]),
    "image_mean inf": ({"image_mean": [0.5, float("inf"), 0.5]}, ValueError, ["`image_mean`", "finite"]),
    "image_mean a string": ({"image_mean": ["a", 0.5, 0.5]}, TypeError, ["`image_mean`", "'a'"]),
    "rescale_factor 0.0": ({"rescale_factor": 0.0}, ValueError, ["`rescale_factor`", "positive"]),
    "rescale_factor negative": ({"rescale_factor": -1 / 255}, ValueError, ["`rescale_factor`", "positive"]),
    "rescale_factor int 0": ({"rescale_factor": 0}, ValueError, ["`rescale_factor`", "positive"]),
    "rescale_factor inf": ({"rescale_factor": float("inf")}, ValueError, ["`rescale_factor`", "finite"]),
    "rescale_factor a string": ({"rescale_factor": "1/255"}, TypeError, ["`rescale_factor`", "'1/255'"]),
    "size negative height": ({"size": {"height": -1, "width": 16}}, ValueError, ["`size`", "'height'", "-1"]),
    "crop_size negative height": ({"crop_size": {"height": -1, "width": 16}}, ValueError, ["`crop_size`", "-1"]),
    "crop_size zero width": ({"crop_size": {"height": 16, "width": 0}}, ValueError, ["`crop_size`", "'width'"]),
}


@pytest.mark.parametrize("when", ["construction", "call"])
@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_bad_settings_raise_naming_the_argument(name, when):
    """Settings that would give NaN / inf / black pixels or a wrong-sized crop are refused, whether given to the
    constructor or at call time, with the argument named."""
    settings, error, fragments = BAD_SETTINGS[name]
    image = smooth_image(20, 24)
    with pytest.raises(error) as info:
        if when == "construction":
            DartImageProcessorPil(**settings)(image, return_tensors="pt")
        else:
            DartImageProcessorPil()(image, return_tensors="pt", **settings)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_an_integer_rescale_factor_is_read_as_a_float():
    image = smooth_image(20, 24)
    settings = {"do_resize": False, "do_center_crop": False, "do_normalize": False}
    got = DartImageProcessorPil(**settings)(image, rescale_factor=1, return_tensors="pt")["pixel_values"]
    np.testing.assert_array_equal(got[0].numpy(), image.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("kwargs,fragments", [
    ({"return_tensors": "xx"}, ["`return_tensors`", "'xx'", "'pt'", "'np'", "None"]),
    ({"input_data_format": "channels_middle"}, ["`input_data_format`", "'channels_middle'", "'channels_first'",
                                                 "'channels_last'"]),
])
def test_bad_call_options_name_the_argument_and_the_accepted_values(processor, kwargs, fragments):
    with pytest.raises(ValueError) as info:
        processor(smooth_image(20, 24), **{"return_tensors": "pt", **kwargs})
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_a_wrongly_typed_option_is_a_type_error_naming_it(processor):
    with pytest.raises(TypeError, match="`do_resize`"):
        processor(smooth_image(20, 24), do_resize="yes", return_tensors="pt")


def test_without_conversion_any_channel_count_passes_through():
    """`do_convert_rgb=False` keeps each image's own channels (as Transformers' processors do), for every input kind;
    the expected values are computed here with PIL and numpy, channel by channel."""
    processor = DartImageProcessorPil(do_convert_rgb=False, size={"shortest_edge": 40},
                                      crop_size={"height": 32, "width": 32}, image_mean=[0.5], image_std=[0.25])
    gray = smooth_image(60, 80, seed=7)[..., 0]
    resized = np.asarray(PIL.Image.fromarray(gray).resize((53, 40), PIL.Image.BICUBIC), np.float32)
    top, left = int(round((40 - 32) / 2)), int(round((53 - 32) / 2))
    expected = (resized[top : top + 32, left : left + 32] / 255 - 0.5) / 0.25
    for image in (gray, gray[None], gray[..., None], PIL.Image.fromarray(gray), torch.from_numpy(gray)[None]):
        out = processor(image, return_tensors="pt")["pixel_values"]
        assert out.shape == (1, 1, 32, 32)
        np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-5)
    # other channel counts: 2 (mode "LA"), 4 (RGBA, not composited) and 5 (channel layout given)
    rgba = np.concatenate([smooth_image(60, 80, seed=8), np.full((60, 80, 1), 9, np.uint8)], -1)
    four = DartImageProcessorPil(do_convert_rgb=False, do_resize=False, do_center_crop=False, do_normalize=False)
    np.testing.assert_allclose(four(PIL.Image.fromarray(rgba), return_tensors="pt")["pixel_values"][0].numpy(),
                               rgba.transpose(2, 0, 1) / 255, atol=1e-7)
    np.testing.assert_allclose(four(PIL.Image.fromarray(rgba).convert("LA"), return_tensors="pt")["pixel_values"][0],
                               np.stack([np.asarray(PIL.Image.fromarray(rgba).convert("L")), rgba[..., 3]]) / 255,
                               atol=1e-7)
    five = np.random.default_rng(0).integers(0, 256, (5, 20, 30), dtype=np.uint8)
    out = four(five, input_data_format="channels_first", return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(out[0].numpy(), five / 255, atol=1e-7)
    # resized channel by channel like a one-band image
    halves = DartImageProcessorPil(do_convert_rgb=False, size={"height": 10, "width": 15}, do_center_crop=False,
                                   do_normalize=False, do_rescale=False)
    got = halves(five, input_data_format="channels_first", return_tensors="pt")["pixel_values"][0].numpy()
    for c in range(5):
        np.testing.assert_array_equal(got[c], np.asarray(PIL.Image.fromarray(five[c]).resize((15, 10), PIL.Image.BICUBIC)))


def test_without_conversion_mismatches_are_clear_errors():
    processor = DartImageProcessorPil(do_convert_rgb=False)  # ImageNet mean/std: three values
    with pytest.raises(ValueError, match=r"`image_mean` has 3 values but the image has 1 channel\(s\)"):
        processor(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"`images\[1\]` is a PIL image of mode 'P'.*do_convert_rgb=True"):
        processor([PIL.Image.new("RGB", (8, 8)), PIL.Image.new("P", (8, 8))])
    with pytest.raises(ValueError, match=r"no channel dimension.*input_data_format"):
        processor(np.zeros((5, 32, 32), np.uint8))


def test_a_one_channel_model_fed_by_its_own_processor(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from modeling_dart import DartForImageClassification
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(num_channels=1)).eval()
    processor = DartImageProcessorPil(do_convert_rgb=False, size={"shortest_edge": 64},
                                      crop_size={"height": 64, "width": 64}, image_mean=[0.5], image_std=[0.5])
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model, processor = AutoModelForImageClassification.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)
    digit = PIL.Image.fromarray(smooth_image(70, 90, seed=2)[..., 1])  # a grayscale photo-like image, mode "L"
    inputs = processor([digit, np.asarray(digit)], return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 1, 64, 64)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0], logits[1], atol=1e-6, rtol=0)  # PIL and array inputs agree


def test_unstackable_shapes_raise(processor):
    image = smooth_image(300, 400)
    with pytest.raises(ValueError, match="cannot stack images of different shapes"):
        processor([image, image[:200]], do_center_crop=False, return_tensors="pt")


# ---------------------------------------------------------------------------------------------- save / load / auto


def test_save_and_load_round_trip(tmp_path, chelsea):
    proc = DartImageProcessor(crop_size=224, size=256)
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DartImageProcessor"  # PilBackend strips the "Pil" suffix
    assert saved["size"] == {"shortest_edge": 256} and saved["crop_size"] == {"height": 224, "width": 224}
    assert saved["image_mean"] == [0.485, 0.456, 0.406]
    loaded = DartImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is DartImageProcessorPil
    assert loaded.to_dict() == proc.to_dict()
    expected = proc(chelsea, return_tensors="pt")["pixel_values"]
    assert torch.equal(loaded(chelsea, return_tensors="pt")["pixel_values"], expected)


def test_auto_image_processor_resolution(tmp_path, chelsea):
    from transformers import AutoConfig, AutoImageProcessor

    register_image_processor(DartConfig)
    register_image_processor(DartConfig)  # idempotent
    DartConfig().save_pretrained(tmp_path)
    DartImageProcessor().save_pretrained(tmp_path)
    assert {"config.json", "preprocessor_config.json"} <= set(os.listdir(tmp_path))
    auto = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(auto) is DartImageProcessorPil
    expected = DartImageProcessor()(chelsea, return_tensors="pt")["pixel_values"]
    assert torch.equal(auto(chelsea, return_tensors="pt")["pixel_values"], expected)

    # Without image_processor_type, resolution goes through config.json's model_type ("dart").
    AutoConfig.register("dart", DartConfig, exist_ok=True)
    path = tmp_path / "preprocessor_config.json"
    data = json.loads(path.read_text())
    del data["image_processor_type"]
    path.write_text(json.dumps(data))
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is DartImageProcessorPil


def test_remote_code_round_trip(tmp_path, monkeypatch):
    """With register_for_auto_class, save_pretrained copies this module (it has no same-folder imports) and writes
    an auto_map; a fresh process that cannot import modeling_dart loads it with AutoImageProcessor + remote code."""
    folder = tmp_path / "hub"
    monkeypatch.setattr(DartImageProcessorPil, "_auto_class", "AutoImageProcessor")
    DartImageProcessor(crop_size=224).save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["image_processing_dart.py", "preprocessor_config.json"]
    saved = json.loads((folder / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_dart.DartImageProcessorPil"}
    assert saved["image_processor_type"] == "DartImageProcessor"

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    load = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from transformers import AutoImageProcessor
        p = AutoImageProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        out = p(np.zeros((300, 400, 3), np.uint8), return_tensors="pt")["pixel_values"]
        assert "modeling_dart" not in sys.modules
        print(type(p).__name__, type(p).__module__.startswith("transformers_modules"), tuple(out.shape))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", load], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["DartImageProcessorPil", "True", "(1,", "3,", "224,", "224)"]


# ---------------------------------------------------------------------------------------------- augmentation


def test_random_resized_crop_is_deterministic(chelsea):
    a = random_resized_crop_and_flip(chelsea, 448, rng=123)
    b = random_resized_crop_and_flip(PIL.Image.fromarray(chelsea), 448, rng=np.random.default_rng(123))
    assert a.size == (448, 448) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    others = [np.asarray(random_resized_crop_and_flip(chelsea, 448, rng=s)) for s in range(1, 4)]
    assert not all(np.array_equal(np.asarray(a), o) for o in others)
    assert random_resized_crop_and_flip(chelsea, (224, 160)).size == (160, 224)  # (height, width) -> PIL (w, h)


def test_random_resized_crop_full_image_and_flip(chelsea):
    pil = PIL.Image.fromarray(chelsea)
    aspect = pil.width / pil.height
    kwargs = dict(size=(300, 451), scale=(1.0, 1.0), ratio=(aspect, aspect))
    kept = random_resized_crop_and_flip(pil, hflip=0.0, rng=0, **kwargs)
    flipped = random_resized_crop_and_flip(pil, hflip=1.0, rng=0, **kwargs)
    assert np.array_equal(np.asarray(kept), chelsea)
    assert np.array_equal(np.asarray(flipped), chelsea[:, ::-1])


def test_random_resized_crop_fallback_and_errors():
    strip = np.zeros((10, 1000, 3), np.uint8)  # no box with aspect in [3/4, 4/3] covering >= 90% fits
    out = random_resized_crop_and_flip(strip, 64, scale=(0.9, 1.0), rng=0)
    assert out.size == (64, 64)
    with pytest.raises(ValueError, match="`scale`"):
        random_resized_crop_and_flip(strip, 64, scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="`hflip`"):
        random_resized_crop_and_flip(strip, 64, hflip=2)
    with pytest.raises(TypeError, match="`image`"):
        random_resized_crop_and_flip("not an image", 64)


def test_train_transform(chelsea):
    images = [PIL.Image.fromarray(chelsea), chelsea[..., 0]]
    first = DartTrainTransform(seed=7)(images)["pixel_values"]
    second = DartTrainTransform(seed=7)(images)["pixel_values"]
    assert first.shape == (2, 3, 448, 448) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, DartTrainTransform(seed=8)(images)["pixel_values"])
    small = DartTrainTransform(DartImageProcessor(crop_size=224), seed=None)(chelsea)["pixel_values"]
    assert small.shape == (1, 3, 224, 224)


def test_seeded_train_transform_differs_between_dataloader_workers(chelsea, monkeypatch):
    """Every DataLoader worker holds a copy of the transform: seeded, each must still draw its own crops, and the
    same worker must repeat its crops from run to run."""
    import torch.utils.data

    image = PIL.Image.fromarray(chelsea)
    crops = {}
    for worker in (None, 0, 1):
        info = None if worker is None else type("WorkerInfo", (), {"id": worker})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        runs = [DartTrainTransform(DartImageProcessor(crop_size=64), seed=3)([image] * 4)["pixel_values"]
                for _ in range(2)]
        assert torch.equal(runs[0], runs[1])
        crops[worker] = runs[0]
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(crops[None], crops[0])


# ---------------------------------------------------------------------- segmentation maps and post-processing


def label_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocks of class ids 0..5 (8x8 pixels each) with an ignored (255) band: nearest resizing keeps whole blocks."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 6, size=(-(-height // 8), -(-width // 8)))
    labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:height, :width]
    labels[: height // 5] = 255
    return labels.astype(np.uint8)


def test_segmentation_maps_follow_their_images_geometry_with_nearest_sampling():
    """Resized (nearest) and cropped as its image, never rescaled: a label map comes back as int64 `labels` whose
    pixels are the PIL nearest resize of the map, on the image's output grid."""
    processor = DartImageProcessor.for_semantic_segmentation(48, 40)
    image, labels = smooth_image(100, 80), label_map(100, 80)
    out = processor(image, segmentation_maps=labels, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 48, 40) and out["labels"].shape == (1, 48, 40)
    assert out["labels"].dtype == torch.int64
    expected = np.asarray(PIL.Image.fromarray(labels).resize((40, 48), PIL.Image.NEAREST))
    assert np.array_equal(out["labels"][0].numpy(), expected)
    assert set(np.unique(expected)) <= set(np.unique(labels)) and (expected == 255).any()
    # the classification defaults: shorter side 512, centre crop 448; the map cropped at the image's offsets
    cropped = DartImageProcessor()(image, segmentation_maps=labels, return_tensors="pt")
    resized = np.asarray(PIL.Image.fromarray(labels).resize((512, 640), PIL.Image.NEAREST))
    assert np.array_equal(cropped["labels"][0].numpy(), resized[96:544, 32:480])


def test_segmentation_map_inputs_and_label_reduction():
    processor = DartImageProcessor.for_semantic_segmentation(32, 32)
    images = [smooth_image(40, 40, seed=1), smooth_image(40, 40, seed=2)]
    labels = label_map(40, 40)
    as_pil = processor(images, segmentation_maps=[PIL.Image.fromarray(labels), PIL.Image.fromarray(labels, "L")],
                       return_tensors="pt")["labels"]
    batch = np.stack([labels, labels]).astype(np.int64)
    for maps in (torch.from_numpy(batch), batch, [labels[None], labels[..., None]]):
        assert torch.equal(processor(images, segmentation_maps=maps, return_tensors="pt")["labels"], as_pil)
    palette = PIL.Image.fromarray(labels, "L").convert("P")  # palette indices are the class ids
    assert torch.equal(processor(images[0], segmentation_maps=palette, return_tensors="pt")["labels"], as_pil[:1])
    wide = labels.astype(np.int64) * 100  # class ids beyond 8 bits
    out = processor(images[0], segmentation_maps=wide, return_tensors="pt")["labels"]
    assert torch.equal(out, as_pil[:1] * 100)
    # reduce_labels: 0 (background) -> 255, l -> l - 1, 255 stays
    reduced = processor(images[0], segmentation_maps=labels, do_reduce_labels=True, return_tensors="pt")["labels"]
    original = as_pil[:1]
    assert torch.equal(reduced, torch.where((original == 0) | (original == 255), 255, original - 1))
    assert processor(images[0], return_tensors="pt").keys() == {"pixel_values"}


def test_bad_segmentation_maps_are_refused_naming_them():
    processor = DartImageProcessor.for_semantic_segmentation(32, 32)
    image, labels = smooth_image(40, 40), label_map(40, 40)
    with pytest.raises(ValueError, match=r"segmentation_maps.*36x40.*image has 40x40"):
        processor(image, segmentation_maps=labels[:36])
    with pytest.raises(ValueError, match=r"segmentation_maps\[1\].*40x36.*image 1 has 40x40"):
        processor([image, image], segmentation_maps=[labels, labels[:, :36]])
    with pytest.raises(ValueError, match="2 label map.*1 image"):
        processor(image, segmentation_maps=[labels, labels])
    with pytest.raises(TypeError, match="segmentation_maps.*float32.*integer class ids"):
        processor(image, segmentation_maps=labels.astype(np.float32))
    with pytest.raises(TypeError, match="segmentation_maps.*bool"):
        processor(image, segmentation_maps=labels > 3)
    with pytest.raises(TypeError, match="segmentation_maps.*mode 'RGB'"):
        processor(image, segmentation_maps=PIL.Image.fromarray(image))
    with pytest.raises(ValueError, match=r"segmentation_maps.*\[-1, "):
        processor(image, segmentation_maps=labels.astype(np.int64) - 1)
    with pytest.raises(TypeError, match="segmentation_maps.*str"):
        processor(image, segmentation_maps="mask.png")
    with pytest.raises(TypeError, match="do_reduce_labels"):
        processor(image, segmentation_maps=labels, do_reduce_labels="yes")


def test_post_process_semantic_segmentation():
    """Logits resized to each target size (bilinear, `align_corners=False`) before the argmax, as Segformer's."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    logits = torch.randn(2, 5, 16, 12, generator=torch.Generator().manual_seed(0))
    outputs = SimpleNamespace(logits=logits)
    processor = DartImageProcessor()
    plain = processor.post_process_semantic_segmentation(outputs)
    assert len(plain) == 2 and torch.equal(plain[1], logits[1].argmax(0))
    sized = processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 20), (7, 9)])
    assert [tuple(m.shape) for m in sized] == [(30, 20), (7, 9)] and sized[0].dtype == torch.int64
    expected = F.interpolate(logits[1:], size=(7, 9), mode="bilinear", align_corners=False)[0].argmax(0)
    assert torch.equal(sized[1], expected)
    assert torch.equal(processor.post_process_semantic_segmentation({"logits": logits}, torch.tensor([[30, 20],
                                                                                                      [7, 9]]))[0],
                       sized[0])
    with pytest.raises(ValueError, match="target_sizes.*1 size.*2 prediction"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 20)])
    with pytest.raises(ValueError, match=r"target_sizes\[1\]"):
        processor.post_process_semantic_segmentation(outputs, target_sizes=[(30, 20), (0, 9)])
    with pytest.raises(ValueError, match="logits"):
        processor.post_process_semantic_segmentation(SimpleNamespace(logits=logits[0]))


def test_segmentation_settings_save_and_load(tmp_path):
    processor = DartImageProcessor.for_semantic_segmentation(64, 96, do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    again = DartImageProcessor.from_pretrained(tmp_path)
    assert again.size == {"height": 64, "width": 96} and again.do_center_crop is False
    assert again.do_reduce_labels is True and again.resample == PIL.Image.BILINEAR
    out = again(smooth_image(40, 40), segmentation_maps=label_map(40, 40), return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 64, 96) and out["labels"].shape == (1, 64, 96)
