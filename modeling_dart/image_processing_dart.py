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
"""Image processor for DART models (PIL/NumPy backend, no torchvision needed).

The released DART checkpoints were evaluated with the DeiT recipe at input size 448: resize the shorter side to
``int(448 / 0.875) = 512`` with bicubic interpolation (aspect ratio kept), centre-crop 448x448, scale to [0, 1] and
normalise with the ImageNet mean/std. [`DartImageProcessorPil`] reproduces exactly that, including the centre-crop
offset convention of `torchvision.transforms.CenterCrop` (offsets rounded, not floored), so the resized and cropped
pixels are identical to the original evaluation pipeline on uint8 / PIL inputs (the float scaling agrees to ~1e-7).

This module only imports `numpy`, `PIL`, `transformers` and `huggingface_hub` (a dependency of `transformers`) so
that it can be copied as Hub remote code on its own.
"""

from __future__ import annotations

import math
import numbers
import re
import typing
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
from huggingface_hub.dataclasses import validate_typed_dict
from huggingface_hub.errors import StrictDataclassError
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_base import BatchFeature
from transformers.image_transforms import convert_to_rgb as _pil_convert_to_rgb
from transformers.image_transforms import get_resize_output_image_size, get_size_with_aspect_ratio
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
    SizeDict,
    get_image_size_for_max_height_width,
)
from transformers.processing_utils import ImagesKwargs
from transformers.utils import TensorType, auto_docstring, logging


logger = logging.get_logger(__name__)

__all__ = [
    "DartImageProcessor",
    "DartImageProcessorKwargs",
    "DartImageProcessorPil",
    "DartTrainTransform",
    "PerWorkerGenerator",
    "random_resized_crop_and_flip",
    "reduce_labels",
    "register_image_processor",
]

# DeiT evaluation recipe: crop_pct 0.875 at the trained resolution of 448.
DART_IMAGE_SIZE = 448
DART_CROP_PCT = 0.875
DART_RESIZE_SHORTEST_EDGE = int(DART_IMAGE_SIZE / DART_CROP_PCT)  # 512

_ALLOWED_TYPES = "a PIL.Image.Image, a numpy.ndarray, a torch.Tensor, or a path/URL string"


def _is_torch_tensor(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        return False
    return isinstance(obj, torch.Tensor)


def _describe(obj: Any) -> str:
    if isinstance(obj, np.ndarray) or _is_torch_tensor(obj):
        return f"{type(obj).__module__}.{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    return f"{type(obj).__module__}.{type(obj).__name__}"


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_PREMULTIPLIED_MODES = {"La": "LA", "RGBa": "RGBA"}


def _pil_to_array(image: PIL.Image.Image, do_convert_rgb: bool) -> tuple[np.ndarray, bool]:
    """A PIL image as an `(H, W)` or `(H, W, C)` array of its values, and whether their scale is known.

    - 16-bit modes (`I;16`, `I;16L`, `I;16B`, `I;16N`): their range 0..65535 mapped onto the 8-bit scale 0..255, as
      float32 (no precision lost); the scale is known.
    - Mode `I` (32-bit integers, no fixed range): read on the 8-bit scale, as PIL itself converts between `I` and `L`;
      values outside 0..255 raise `ValueError`.
    - Mode `F` (32-bit floats, no fixed range): float32, to be checked like any float array.
    - Mode `1`: 0 and 255. Premultiplied `La` / `RGBa`: un-premultiplied first.
    - Other modes: converted to RGB by PIL with `do_convert_rgb` (transparency composited onto white), else their own
      bands (palette modes `P` / `PA` raise `ValueError`: their values are indices).
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.float32) / np.float32(257), True
    if mode == "I":
        array = np.asarray(image)
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"is a PIL image of mode 'I' (32-bit integers) with values in [{lo}, {hi}]; mode 'I' has no fixed "
                "range and is read on the 8-bit scale [0, 255], as PIL converts it. Convert 16-bit data to mode "
                "'I;16' (read as 0..65535), e.g. image.convert('I;16'), or pass a float array with a matching "
                "rescale_factor."
            )
        return array.astype(np.uint8), True
    if mode == "F":
        return np.asarray(image, dtype=np.float32), False
    if mode in _PREMULTIPLIED_MODES:
        image = image.convert(_PREMULTIPLIED_MODES[mode])
    elif mode == "1":
        image = image.convert("L")
    if do_convert_rgb:
        return _pil_convert_to_rgb(image, return_numpy=True), True
    if image.mode in ("P", "PA"):
        raise ValueError(
            f"is a PIL image of mode {image.mode!r} (palette indices, not pixel values); pass do_convert_rgb=True "
            "to convert it, or convert it yourself."
        )
    return np.asarray(image), True


def _flatten_images(images: Any, fetch) -> list:
    """Turn the `images` argument into a flat list of single images (PIL, or 2-D / 3-D arrays and tensors).

    Accepts one image, a 4-D batch array/tensor, a (possibly nested) list/tuple of images, and path/URL strings (loaded
    with `fetch`). Raises `TypeError` / `ValueError` naming the offending entry.
    """

    def single(obj: Any, where: str) -> list:
        if isinstance(obj, PIL.Image.Image):
            return [obj]
        if isinstance(obj, str):
            try:
                return [fetch(obj)]
            except (ValueError, OSError) as err:
                raise ValueError(
                    f"`{where}` is the string {obj[:200]!r}, which could not be loaded as an image; expected a "
                    f"path to an image file, an http(s) URL or base64 data ({err})."
                ) from err
        if isinstance(obj, np.ndarray) or _is_torch_tensor(obj):
            if obj.ndim in (2, 3):
                return [obj]
            if obj.ndim == 4:
                if obj.shape[0] == 0:
                    raise ValueError(
                        f"`{where}` is an empty batch (shape {tuple(obj.shape)}); expected at least one image."
                    )
                return list(obj)
            raise ValueError(
                f"`{where}` has {obj.ndim} dimensions (shape {tuple(obj.shape)}); expected a 2-D (H, W) grayscale "
                "image, a 3-D (C, H, W) or (H, W, C) image, or a 4-D batch of such images."
            )
        raise TypeError(f"`{where}` has type {_describe(obj)}; expected {_ALLOWED_TYPES}.")

    if images is None:
        raise TypeError(f"`images` is None; expected {_ALLOWED_TYPES}, or a list of them.")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("`images` is an empty list; expected at least one image.")
        flat = []
        for i, item in enumerate(images):
            if isinstance(item, (list, tuple)):  # one level of nesting, e.g. [[img, img], [img]]
                for j, sub in enumerate(item):
                    flat.extend(single(sub, f"images[{i}][{j}]"))
            else:
                flat.extend(single(item, f"images[{i}]"))
        if not flat:
            raise ValueError("`images` contains only empty lists; expected at least one image.")
        return flat
    return single(images, "images")


# ---------------------------------------------------------------------- settings (constructor and call-time options)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _checked_rescale_factor(value: Any) -> float:
    """`rescale_factor` as a float, or `TypeError` / `ValueError` naming it: a positive finite number."""
    if not _is_real(value):
        raise TypeError(
            f"`rescale_factor` must be a positive finite number (pixel values are multiplied by it, e.g. 1/255); "
            f"got {value!r} of type {type(value).__name__}."
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            "`rescale_factor` must be a positive finite number (pixel values are multiplied by it, e.g. 1/255); "
            f"got {value!r}."
        )
    return float(value)


def _checked_mean_or_std(name: str, value: Any) -> float | tuple[float, ...]:
    """`image_mean` / `image_std` as a float or a tuple of floats (one per channel), or `TypeError` / `ValueError`
    naming it: finite numbers, and for `image_std` positive ones (pixels are divided by them)."""
    single = not isinstance(value, (list, tuple, np.ndarray))
    values = [value] if single else (value.ravel().tolist() if isinstance(value, np.ndarray) else list(value))
    what = "one positive finite number per channel" if name == "image_std" else "one finite number per channel"
    if not values:
        raise ValueError(f"`{name}` is empty; expected {what} (or a single number for all channels).")
    for item in values:
        if not _is_real(item):
            raise TypeError(f"`{name}` must hold numbers, {what}; got {value!r} (the entry {item!r} has type "
                            f"{type(item).__name__}).")
    if not all(math.isfinite(item) for item in values):
        raise ValueError(f"`{name}` must hold finite numbers, {what}; got {value!r}.")
    if name == "image_std" and min(values) <= 0:
        raise ValueError(f"`image_std` must hold positive numbers (pixels are divided by them), {what}; got {value!r}.")
    return float(values[0]) if single else tuple(float(item) for item in values)


def _checked_numeric_settings(settings: dict) -> dict:
    """A copy of `settings` with `rescale_factor`, `image_mean` and `image_std` (where given, not None) checked and
    turned into floats, so that an int such as `rescale_factor=1` passes Transformers' type validation."""
    settings = dict(settings)
    if settings.get("rescale_factor") is not None:
        settings["rescale_factor"] = _checked_rescale_factor(settings["rescale_factor"])
    for name in ("image_mean", "image_std"):
        if settings.get(name) is not None:
            settings[name] = _checked_mean_or_std(name, settings[name])
    return settings


def _check_size(name: str, size: Any) -> None:
    """`size` / `crop_size` (a `SizeDict` or dict once standardised): every given entry a positive integer."""
    if size is None:
        return
    entries = {key: value for key, value in dict(size).items() if value is not None}
    for key, value in entries.items():
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"`{name}` must hold positive integers; got {key!r}: {value!r} in {entries}.")


def _check_choice(name: str, value: Any, choices: type) -> None:
    """`value` is None, a member of the enum `choices`, or one of its string values; else `ValueError` naming `name`."""
    if value is None or isinstance(value, choices):
        return
    accepted = [member.value for member in choices]
    if not isinstance(value, str) or value not in accepted:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(v) for v in accepted)} or None; got {value!r}.")


def _typed_kwarg_error(error: StrictDataclassError, kwargs: dict, valid_kwargs: type) -> TypeError:
    """Transformers' type validation of the call options (huggingface_hub's `StrictDataclassFieldValidationError`,
    neither a `TypeError` nor a `ValueError`) as a `TypeError` naming the option and the types it takes."""
    match = re.match(r"Validation error for field '([^']+)'", str(error))
    if match is None:
        return TypeError(str(error))
    field = match.group(1)
    expected = valid_kwargs.__annotations__.get(field)
    if typing.get_origin(expected) is typing.Annotated:
        expected = typing.get_args(expected)[0]
    expected = str(expected).replace("typing.", "").replace("NoneType", "None")
    value = kwargs.get(field)
    return TypeError(f"`{field}` got {value!r} of type {type(value).__name__}; expected {expected}.")



class DartImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Reduce every label of the segmentation maps by 1 and make label 0 the ignore index 255, for datasets whose
        label 0 is a background that is not a class (ADE20K).
    """

    do_reduce_labels: bool


# the label of pixels without one (Transformers' segmentation processors and losses): labels reduced from 0 and pixels
# a crop pads get it
IGNORE_LABEL = 255
# label maps are resized in PIL's 32-bit float mode beyond 8 bits: integers are exact up to 2**24
_MAX_LABEL = 2**24


def _flatten_segmentation_maps(maps: Any) -> list:
    """The `segmentation_maps` argument as a flat list of single maps: one map (PIL image, 2-D array or tensor), a
    3-D array or tensor `(batch, height, width)`, or a list of maps."""
    if maps is None:
        raise TypeError("`segmentation_maps` is None; expected label maps, or leave the argument out.")
    if isinstance(maps, (list, tuple)):
        if len(maps) == 0:
            raise ValueError("`segmentation_maps` is an empty list; expected one label map per image.")
        return list(maps)
    if (isinstance(maps, np.ndarray) or _is_torch_tensor(maps)) and maps.ndim == 3:
        return list(maps)
    return [maps]


def _segmentation_map_to_array(label_map: Any, where: str) -> np.ndarray:
    """One label map as an `(H, W)` int64 array of class ids, or `TypeError` / `ValueError` naming `where`.

    PIL images of modes `L`, `P` (palette indices are the class ids), `I`, `I;16*` give their values; colour images,
    floats and booleans are refused (a label map holds integer class ids). Arrays and tensors may be `(H, W)`,
    `(1, H, W)` or `(H, W, 1)`.
    """
    if isinstance(label_map, PIL.Image.Image):
        if label_map.mode not in ("L", "P", "I", *_SIXTEEN_BIT_MODES):
            raise TypeError(
                f"`{where}` is a PIL image of mode {label_map.mode!r}; a label map holds one integer class id per "
                "pixel (modes 'L', 'P', 'I' or 'I;16'). Convert colour-coded masks to class ids first."
            )
        array = np.asarray(label_map)
    elif _is_torch_tensor(label_map):
        array = label_map.detach().cpu().numpy()
    elif isinstance(label_map, np.ndarray):
        array = label_map
    else:
        raise TypeError(f"`{where}` has type {_describe(label_map)}; expected a PIL image, a numpy array or a torch "
                        "tensor of integer class ids.")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{where}` has dtype {array.dtype}; a label map holds integer class ids (e.g. uint8 or "
                        "int64).")
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"`{where}` has shape {tuple(array.shape)}; expected a non-empty (height, width) label map.")
    if array.size and (int(array.min()) < 0 or int(array.max()) >= _MAX_LABEL):
        raise ValueError(f"`{where}` has labels in [{int(array.min())}, {int(array.max())}]; expected class ids in "
                         f"[0, {_MAX_LABEL}) ({IGNORE_LABEL} for pixels without a label).")
    return array.astype(np.int64)


def reduce_labels(label_map: np.ndarray) -> np.ndarray:
    """Label 0 (a background that is not a class) becomes the ignore index 255, every other label `l` becomes
    `l - 1`, and 255 stays 255 (Transformers' `do_reduce_labels`)."""
    reduced = label_map - 1
    reduced[(label_map == 0) | (label_map == IGNORE_LABEL)] = IGNORE_LABEL
    return reduced


# what the generated docstring says before the arguments
_PROCESSOR_INTRO = r"""Constructs a DART image processor with the PIL/NumPy backend (no torchvision required).

The defaults reproduce the evaluation preprocessing of the released DART checkpoints (DeiT recipe at 448):
bicubic resize of the shorter side to 512, centre crop 448x448, rescale by 1/255, normalise with the ImageNet mean
`(0.485, 0.456, 0.406)` and std `(0.229, 0.224, 0.225)`.

Inputs: a PIL image, a numpy array or torch tensor (`(H, W)`, `(C, H, W)` or `(H, W, C)`, or a 4-D batch), a path
or URL, or a list of those. Grayscale (1 channel / mode `"L"`) and RGBA (4 channels, composited onto white) inputs
are converted to RGB when `do_convert_rgb=True` (the default). With `do_convert_rgb=False` the channels pass through
unchanged, whatever their number (e.g. 1-channel images for a `num_channels=1` model; give `image_mean` /
`image_std` one value per channel, and `input_data_format` when the channel dimension is ambiguous, i.e. not of
size 1, 3 or 4).

Value scales: integer arrays must hold values in [0, 255]. With `do_rescale=True`, float arrays and tensors are on
the same 0-255 scale as uint8 (`[0, 1 / rescale_factor]`); values outside it, and float images within [0, 1]
(which would come out black), raise `ValueError`; pass `do_rescale=False` for float images already in [0, 1]. PIL
images are read by mode: 16-bit modes (`I;16`, `I;16B`, ...) on their range 0..65535, mapped to the 8-bit scale
without rounding; mode `I` like an integer array (0..255); mode `F` like a float array; mode `1` as 0 / 255;
8-bit modes (`L`, `LA`, `P`, `PA`, `RGBA`, `RGBa`, `CMYK`, `YCbCr`, `HSV`, `LAB`, ...) through PIL's conversion to
RGB. Float images are resized in float precision (no round trip through uint8).
"""


@auto_docstring(custom_intro=_PROCESSOR_INTRO)
class DartImageProcessorPil(PilBackend):
    r"""
    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`): Convert grayscale / RGBA / palette images to RGB;
            `False` keeps every image's own channels.
        do_resize (`bool`, *optional*, defaults to `True`): Whether to resize.
        size (`dict[str, int]`, *optional*, defaults to `{"shortest_edge": 512}`): Resize target. An int means the
            shorter side (aspect ratio kept); `{"height": h, "width": w}` resizes to exactly that.
        resample (`PILImageResampling`, *optional*, defaults to `BICUBIC`): Resampling filter.
        do_center_crop (`bool`, *optional*, defaults to `True`): Whether to centre-crop after resizing.
        crop_size (`dict[str, int]`, *optional*, defaults to `{"height": 448, "width": 448}`): Crop size. Offsets
            follow `torchvision.transforms.CenterCrop` (rounded); smaller images are zero-padded first.
        do_rescale (`bool`, *optional*, defaults to `True`), rescale_factor (`float`, defaults to `1/255`).
        do_normalize (`bool`, *optional*, defaults to `True`), image_mean / image_std (ImageNet defaults).

    Returns (from `__call__`): a `BatchFeature` with `pixel_values`, of shape `(batch_size, 3, 448, 448)` and dtype
    float32 with `return_tensors="pt"` (a list of `(3, H, W)` float32 arrays with `return_tensors=None`); `C` channels
    instead of 3 for `C`-channel images with `do_convert_rgb=False`.
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = DartImageProcessorKwargs

    do_convert_rgb = True
    do_resize = True
    size = {"shortest_edge": DART_RESIZE_SHORTEST_EDGE}
    default_to_square = False
    resample = PILImageResampling.BICUBIC
    do_center_crop = True
    crop_size = {"height": DART_IMAGE_SIZE, "width": DART_IMAGE_SIZE}
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_reduce_labels = False

    def __init__(self, **kwargs):
        super().__init__(**_checked_numeric_settings(kwargs))
        for name in ("size", "crop_size"):
            _check_size(name, getattr(self, name, None))

    # ------------------------------------------------------------------ settings

    @classmethod
    def for_semantic_segmentation(cls, height: int = 512, width: int = 512, **kwargs) -> DartImageProcessorPil:
        """A processor for segmentation: every image resized to `height x width` (bilinear), no crop, so that a
        prediction covers the whole image and `post_process_semantic_segmentation` maps it back to the image's size;
        label maps given as `segmentation_maps` are resized with nearest sampling. `kwargs` override any setting."""
        settings = {"size": {"height": height, "width": width}, "do_center_crop": False,
                    "resample": PILImageResampling.BILINEAR, **kwargs}
        return cls(**settings)

    @auto_docstring
    def preprocess(self, images: Any, segmentation_maps: Any = None, **kwargs) -> BatchFeature:
        r"""
        images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, a path or URL, or a list of those):
            The images to preprocess (see the class docstring for the accepted layouts, modes and value scales). The
            numeric options are checked first, and every option is refused with a `TypeError` / `ValueError` that
            names it.
        segmentation_maps (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list of those, *optional*):
            One label map per image, of the image's size, holding integer class ids (255 for pixels without a
            label): PIL images of mode `L`, `P`, `I` or `I;16`, `(H, W)` arrays or tensors, or a `(batch, H, W)`
            batch. They are resized (nearest) and cropped as their images, never rescaled or normalised, and returned
            as `labels` (int64). Padding by the crop gets 255.
        """
        kwargs = _checked_numeric_settings(kwargs)
        try:
            validate_typed_dict(self.valid_kwargs, kwargs)
        except StrictDataclassError as error:
            raise _typed_kwarg_error(error, kwargs, self.valid_kwargs) from error
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _preprocess_image_like_inputs(self, images: Any, segmentation_maps: Any = None, **kwargs) -> BatchFeature:
        do_reduce_labels = kwargs.pop("do_reduce_labels", None)
        prepared = self._prepare_image_like_inputs(images, **kwargs)
        data = self._preprocess(prepared, **kwargs)
        if segmentation_maps is None:
            return data
        maps = _flatten_segmentation_maps(segmentation_maps)
        if len(maps) != len(prepared):
            raise ValueError(f"`segmentation_maps` holds {len(maps)} label map(s) for {len(prepared)} image(s); "
                             "give one label map per image.")
        labels = []
        for i, (label_map, image) in enumerate(zip(maps, prepared)):
            where = "segmentation_maps" if len(maps) == 1 else f"segmentation_maps[{i}]"
            label_map = _segmentation_map_to_array(label_map, where)
            if label_map.shape != image.shape[1:]:
                which = "the image" if len(maps) == 1 else f"image {i}"
                raise ValueError(f"`{where}` has size {label_map.shape[0]}x{label_map.shape[1]} (height x width) "
                                 f"but {which} has {image.shape[1]}x{image.shape[2]}; a label map gives the class of "
                                 "each pixel of its image.")
            if do_reduce_labels:
                label_map = reduce_labels(label_map)
            labels.append(self._resize_and_crop_labels(label_map, **kwargs))
        return_tensors = kwargs.get("return_tensors")
        if return_tensors is not None and len({label.shape for label in labels}) > 1:
            raise ValueError(f"cannot stack label maps of different sizes {sorted({label.shape for label in labels})} "
                             f"(return_tensors={return_tensors!r}); resize to one size (`size={{'height': h, 'width': "
                             "w}`) or pass return_tensors=None.")
        return BatchFeature(data={**data, "labels": labels}, tensor_type=return_tensors)

    def _resize_and_crop_labels(self, label_map: np.ndarray, do_resize=None, size=None, do_center_crop=None,
                                crop_size=None, **kwargs) -> np.ndarray:
        """One `(H, W)` int64 label map through its image's geometry: resize with nearest sampling (in PIL's 8-bit
        mode, or its 32-bit float mode for labels above 255, exact for integers), then the same centre crop, padding
        with 255."""
        small = int(label_map.max()) <= 255
        values = label_map.astype(np.uint8 if small else np.float32)[None]
        if do_resize:
            values = self.resize(values, size, resample=PILImageResampling.NEAREST)
        values = values.astype(np.int64)
        if do_center_crop:
            height, width = values.shape[1:]
            pad_h, pad_w = max(crop_size.height - height, 0), max(crop_size.width - width, 0)
            if pad_h or pad_w:  # torchvision's CenterCrop pads as `center_crop` does, here with the ignore label
                values = np.pad(values, ((0, 0), (pad_h // 2, (pad_h + 1) // 2), (pad_w // 2, (pad_w + 1) // 2)),
                                constant_values=IGNORE_LABEL)
            values = self.center_crop(values, crop_size)
        return np.ascontiguousarray(values[0])

    def post_process_semantic_segmentation(self, outputs, target_sizes: Sequence | None = None) -> list:
        """The class of every pixel from a segmentation model's output (Transformers' Segformer / BEiT interface).

        Args:
            outputs: the model's output, with `logits` of shape `(batch_size, num_labels, height, width)`
                ([`DartReshaperForSemanticSegmentation`]: already on the input grid).
            target_sizes (`list[tuple[int, int]]` or a `(batch_size, 2)` tensor, *optional*): the `(height, width)`
                of each prediction, usually the original image's; the logits are resized to it bilinearly
                (`align_corners=False`) before the argmax. Without it the maps have the logits' size.

        Returns:
            `list[torch.Tensor]`: one `(height, width)` int64 map of class ids per image.
        """
        import torch
        from torch.nn import functional as F

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"`outputs.logits` must have shape (batch_size, num_labels, height, width), got {shape}.")
        if target_sizes is None:
            return list(logits.argmax(dim=1))
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if len(target_sizes) != len(logits):
            raise ValueError(f"`target_sizes` holds {len(target_sizes)} size(s) for {len(logits)} prediction(s); give "
                             "one (height, width) per image.")
        maps = []
        for i, size in enumerate(target_sizes):
            if (len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
                                      for s in size)):
                raise ValueError(f"`target_sizes[{i}]` must be a (height, width) pair of positive integers, got "
                                 f"{size!r}.")
            resized = F.interpolate(logits[i : i + 1], size=(int(size[0]), int(size[1])), mode="bilinear",
                                    align_corners=False)
            maps.append(resized[0].argmax(dim=0))
        return maps

    def _validate_preprocess_kwargs(self, **kwargs) -> None:
        # the options merged with the instance's settings (sizes standardised to `SizeDict`)
        _checked_numeric_settings(kwargs)
        for name in ("size", "crop_size"):
            _check_size(name, kwargs.get(name))
        _check_choice("return_tensors", kwargs.get("return_tensors"), TensorType)
        _check_choice("input_data_format", kwargs.get("input_data_format"), ChannelDimension)
        # this module's annotations are strings (`from __future__ import annotations`), which the typed-dict
        # validation does not check: the option added here is checked by hand
        reduce = kwargs.get("do_reduce_labels")
        if reduce is not None and not isinstance(reduce, (bool, np.bool_)):
            raise TypeError(f"`do_reduce_labels` got {reduce!r} of type {type(reduce).__name__}; expected bool or None.")
        super()._validate_preprocess_kwargs(**kwargs)

    # ------------------------------------------------------------------ input preparation and validation

    def _prepare_image_like_inputs(self, images, *args, expected_ndims: int = 3, **kwargs) -> list[np.ndarray]:
        flat = _flatten_images(images, self.fetch_images)
        single = not isinstance(images, (list, tuple)) and len(flat) == 1
        prepared = []
        for i, image in enumerate(flat):
            try:
                prepared.append(self.process_image(image, *args, **kwargs))
            except (TypeError, ValueError) as err:
                where = "images" if single else f"images[{i}]"
                raise type(err)(f"`{where}` {err}") from err
        return prepared

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        do_rescale: bool | None = None,
        rescale_factor: float | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Validate one image and convert it to a channels-first `(C, H, W)` numpy array (uint8 or float32): `C = 3`
        with `do_convert_rgb=True`, the image's own channels otherwise."""
        known_scale = False
        if isinstance(image, PIL.Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"is an empty PIL image of size {image.size}; expected at least 1x1 pixels.")
            # channels last ((H, W) for one band), checked like any array below
            image, known_scale = _pil_to_array(image, do_convert_rgb)
            input_data_format = ChannelDimension.LAST

        if _is_torch_tensor(image):
            import torch

            tensor = image.detach().cpu()
            if tensor.is_floating_point() and tensor.dtype != torch.float64:
                tensor = tensor.float()  # half/bfloat16 have no numpy equivalent
            image = tensor.numpy()
        if not isinstance(image, np.ndarray):
            raise TypeError(f"has type {_describe(image)}; expected {_ALLOWED_TYPES}.")

        original_shape = tuple(image.shape)
        image = self._validate_array_values(image, do_rescale, rescale_factor, known_scale)

        # Channels-first layout.
        if image.ndim == 2:
            image = image[None]
        else:
            if input_data_format is None:
                if image.shape[0] in (1, 3, 4):
                    input_data_format = ChannelDimension.FIRST
                elif image.shape[-1] in (1, 3, 4):
                    input_data_format = ChannelDimension.LAST
                else:
                    raise ValueError(
                        f"has shape {tuple(image.shape)} with no channel dimension: expected 1 "
                        "(grayscale), 3 (RGB) or 4 (RGBA) channels in the first (C, H, W) or last (H, W, C) dimension "
                        "(for other channel counts pass do_convert_rgb=False and input_data_format='channels_first' "
                        "or 'channels_last')."
                    )
            input_data_format = ChannelDimension(input_data_format)
            if input_data_format == ChannelDimension.LAST:
                image = np.moveaxis(image, -1, 0)
            if image.shape[0] not in (1, 3, 4) and do_convert_rgb:
                raise ValueError(
                    f"has {image.shape[0]} channels (shape {tuple(image.shape)}, input_data_format="
                    f"{input_data_format.value!r}); expected 1 (grayscale), 3 (RGB) or 4 (RGBA) channels to convert "
                    "to RGB (pass do_convert_rgb=False to keep them as they are)."
                )
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"is empty (shape {original_shape}); expected at least 1x1 pixels.")

        num_channels = image.shape[0]
        if num_channels != 3 and do_convert_rgb:
            if num_channels == 1:
                image = np.repeat(image, 3, axis=0)
            else:  # RGBA: composite onto a white background, on the image's own value scale
                if image.dtype == np.uint8:
                    white = 255.0
                else:
                    white = (1.0 / rescale_factor) if (do_rescale and rescale_factor) else 1.0
                alpha = image[3:4].astype(np.float32) / np.float32(white)
                if alpha.min() < 0 or alpha.max() > 1:
                    raise ValueError(
                        f"has alpha values in [{float(image[3].min())}, {float(image[3].max())}]; expected "
                        f"[0, {white:g}] (the image's value scale)."
                    )
                rgb = alpha * image[:3].astype(np.float32) + (1.0 - alpha) * np.float32(white)
                image = np.round(rgb).astype(np.uint8) if image.dtype == np.uint8 else rgb.astype(np.float32)
        return np.ascontiguousarray(image)

    @staticmethod
    def _validate_array_values(
        image: np.ndarray, do_rescale: bool | None, rescale_factor: float | None = None, known_scale: bool = False
    ) -> np.ndarray:
        """Check the dtype and values of an array image; returns uint8 or float32.

        Integers must lie in [0, 255]. With `do_rescale`, floats are on the scale of 8-bit images, `[0, 1 /
        rescale_factor]`: values outside it, and images within [0, 1] (other than all zero), raise `ValueError`,
        unless `known_scale` (a 16-bit PIL image already mapped to that scale).
        """
        dtype = image.dtype
        if dtype == np.uint8:
            return image
        if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise TypeError(
                f"has dtype {dtype}; expected uint8, another integer type with values in [0, 255], or float."
            )
        if image.size == 0:
            return image.astype(np.float32)
        if np.issubdtype(dtype, np.integer):
            lo, hi = int(image.min()), int(image.max())
            if lo < 0 or hi > 255:
                raise ValueError(
                    f"has integer values in [{lo}, {hi}]; expected values in [0, 255] (8-bit). Convert other bit "
                    "depths to uint8, or to float and pass a matching rescale_factor."
                )
            return image.astype(np.uint8)
        image = image.astype(np.float32, copy=False)
        if not np.isfinite(image).all():
            bad = int((~np.isfinite(image)).sum())
            raise ValueError(f"contains {bad} NaN or infinite value(s); expected finite pixel values.")
        if do_rescale and rescale_factor and not known_scale:
            top = 1.0 / rescale_factor
            lo, hi = float(image.min()), float(image.max())
            if lo < 0 or hi > top * (1 + 1e-6):
                raise ValueError(
                    f"has float values in [{lo:g}, {hi:g}]; with do_rescale=True floats are read on the scale of "
                    f"8-bit images, [0, {top:g}] (rescale_factor={rescale_factor:g}). Pass images in [0, 1] with "
                    "do_rescale=False, images in [-1, 1] as (image + 1) / 2 with do_rescale=False, or clip the "
                    "values."
                )
            if 0 < hi <= 1 < top:
                raise ValueError(
                    f"has float values in [{lo:g}, {hi:g}], within [0, 1]; with do_rescale=True floats are read on "
                    f"the scale of 8-bit images, [0, {top:g}], where this image is almost black. If it is scaled to "
                    "[0, 1], pass do_rescale=False."
                )
        return image

    # ------------------------------------------------------------------ geometric operations

    @staticmethod
    def _output_size(height: int, width: int, size: SizeDict) -> tuple[int, int]:
        """(height, width) after resizing, with the same rules as transformers' `PilBackend.resize`."""
        if size.shortest_edge and size.longest_edge:
            return tuple(get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge))
        if size.shortest_edge:
            dummy = np.empty((1, height, width), dtype=np.uint8)
            return tuple(
                get_resize_output_image_size(
                    dummy, size=size.shortest_edge, default_to_square=False, input_data_format=ChannelDimension.FIRST
                )
            )
        if size.max_height and size.max_width:
            return tuple(get_image_size_for_max_height_width((height, width), size.max_height, size.max_width))
        if size.height and size.width:
            return (size.height, size.width)
        raise ValueError(
            "`size` must contain 'height' and 'width', or 'max_height' and 'max_width', or 'shortest_edge' "
            f"(optionally with 'longest_edge'); got {size}."
        )

    def resize(
        self,
        image: np.ndarray,
        size: SizeDict,
        resample: PILImageResampling | int | None = None,
        reducing_gap: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Resize a (C, H, W) array with PIL. uint8 images go through PIL's 8-bit path (identical to resizing the PIL
        image); float images are resized channel by channel in PIL's 32-bit float mode (no quantisation, no range
        restriction)."""
        if resample is None:
            resample = PILImageResampling.BILINEAR
        elif not isinstance(resample, (PILImageResampling, int)):
            raise TypeError(f"`resample` must be a PILImageResampling filter or int; got {resample!r}.")
        height, width = image.shape[-2:]
        new_height, new_width = self._output_size(height, width, size)
        if (new_height, new_width) == (height, width):
            return image
        if image.dtype == np.uint8 and image.shape[0] in (3, 4):  # one RGB / RGBA image
            pil = PIL.Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
            out = np.asarray(pil.resize((new_width, new_height), resample=resample, reducing_gap=reducing_gap))
            return np.ascontiguousarray(np.moveaxis(out, -1, 0))
        # any other channel count: channel by channel, in PIL's 8-bit mode "L" or its 32-bit float mode "F"
        dtype = np.uint8 if image.dtype == np.uint8 else np.float32
        channels = [
            np.asarray(
                PIL.Image.fromarray(np.ascontiguousarray(channel, dtype=dtype)).resize(
                    (new_width, new_height), resample=resample, reducing_gap=reducing_gap
                )
            )
            for channel in image
        ]
        return np.stack(channels).astype(dtype, copy=False)

    def center_crop(self, image: np.ndarray, size: SizeDict, **kwargs) -> np.ndarray:
        """Centre-crop a (C, H, W) array to `(size.height, size.width)` like `torchvision.transforms.CenterCrop`:
        an image smaller than the crop is zero-padded (extra pixel at the bottom/right), and the crop offset is
        `round((H - h) / 2)` (Python rounding), where transformers' numpy `center_crop` floors it."""
        if size.height is None or size.width is None:
            raise ValueError(f"`crop_size` must have keys 'height' and 'width'; got {dict(size)}.")
        crop_h, crop_w = size.height, size.width
        height, width = image.shape[-2:]
        if crop_h > height or crop_w > width:
            pad_top = (crop_h - height) // 2 if crop_h > height else 0
            pad_bottom = (crop_h - height + 1) // 2 if crop_h > height else 0
            pad_left = (crop_w - width) // 2 if crop_w > width else 0
            pad_right = (crop_w - width + 1) // 2 if crop_w > width else 0
            image = np.pad(image, ((0, 0), (pad_top, pad_bottom), (pad_left, pad_right)), mode="constant")
            height, width = image.shape[-2:]
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return image[:, top : top + crop_h, left : left + crop_w]

    def _preprocess(self, images: list[np.ndarray], *args, return_tensors=None, **kwargs) -> BatchFeature:
        if kwargs.get("do_normalize"):
            for name in ("image_mean", "image_std"):
                values = kwargs.get(name)
                if isinstance(values, (list, tuple)):
                    for i, image in enumerate(images):
                        if len(values) != image.shape[0]:
                            where = "the image" if len(images) == 1 else f"image {i}"
                            raise ValueError(
                                f"`{name}` has {len(values)} values but {where} has {image.shape[0]} channel(s); "
                                f"give one value per channel (e.g. {name}=[0.5] for 1-channel images), or keep "
                                "do_convert_rgb=True for RGB."
                            )
        # The backend leaves uint8 pixels as uint8 when both rescaling and normalisation are off; the model always
        # wants float32, so cast before building the BatchFeature.
        output = super()._preprocess(images, *args, return_tensors=None, **kwargs)
        pixel_values = [np.asarray(value, dtype=np.float32) for value in output["pixel_values"]]
        if return_tensors is not None and len({value.shape for value in pixel_values}) > 1:
            shapes = sorted({value.shape for value in pixel_values})
            raise ValueError(
                f"cannot stack images of different shapes {shapes} into one tensor "
                f"(return_tensors={return_tensors!r}); keep do_center_crop=True or use "
                "size={'height': h, 'width': w}, or pass return_tensors=None."
            )
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)


# The name users import. As in transformers 5 itself (e.g. `DeiTImageProcessor` resolves to `DeiTImageProcessorPil`
# when torchvision is missing), the plain name is the PIL class: there is no torchvision backend to offer here.
# An alias (not a subclass) keeps one class object, so `save_pretrained` writes `image_processor_type:
# "DartImageProcessor"` (PilBackend strips the `Pil` suffix) and `AutoImageProcessor` / `from_pretrained` give back
# this very class.
DartImageProcessor = DartImageProcessorPil


def register_image_processor(config_class: type, exist_ok: bool = True) -> None:
    """Register [`DartImageProcessorPil`] with `AutoImageProcessor` for `config_class` (PIL backend).

    `AutoImageProcessor.from_pretrained` then resolves a saved folder (whose `preprocessor_config.json` says
    `"image_processor_type": "DartImageProcessor"`) to `DartImageProcessorPil`. Safe to call more than once.
    """
    from transformers import AutoImageProcessor

    AutoImageProcessor.register(
        config_class, image_processor_classes={"pil": DartImageProcessorPil}, exist_ok=exist_ok
    )


# ---------------------------------------------------------------------- training-time augmentation


def _to_pil_rgb(image: Any) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        if image.mode == "RGB":
            return image
        if image.mode == "F":
            raise ValueError(
                "`image` is a PIL image of mode 'F' (floats, no fixed range); the training augmentation works on "
                "8-bit images: convert it to 'L' or 'RGB' on the scale it is meant to have."
            )
        try:
            array, _ = _pil_to_array(image, do_convert_rgb=True)
        except ValueError as err:
            raise ValueError(f"`image` {err}") from err
        if array.dtype != np.uint8:  # 16-bit, already on the 8-bit scale
            array = np.round(array).astype(np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        return PIL.Image.fromarray(np.ascontiguousarray(array))
    if _is_torch_tensor(image):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"`image` array has dtype {image.dtype}; expected uint8 (H, W) or (H, W, C).")
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
            raise ValueError(f"`image` array has shape {image.shape}; expected (H, W), (H, W, 3) or (H, W, 4).")
        pil = PIL.Image.fromarray(np.ascontiguousarray(image))
        return pil if pil.mode == "RGB" else PIL.Image.fromarray(_pil_convert_to_rgb(pil, return_numpy=True))
    raise TypeError(f"`image` has type {_describe(image)}; expected a PIL.Image.Image or a uint8 numpy array.")


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    elif isinstance(size, dict) and "height" in size and "width" in size:
        size = (size["height"], size["width"])
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"`{name}` must be a positive int or a (height, width) pair; got {size!r}.")
    return int(size[0]), int(size[1])


def random_resized_crop_and_flip(
    image: Any,
    size: int | Sequence[int] = DART_IMAGE_SIZE,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    rng: np.random.Generator | int | None = None,
    resample: PILImageResampling | int = PILImageResampling.BICUBIC,
) -> PIL.Image.Image:
    """Inception-style random resized crop plus random horizontal flip, in PIL (the DeiT training geometry).

    Samples a box covering a fraction `scale` of the image area with aspect ratio (log-uniform) in `ratio`, with the
    sampling rule of `torchvision.transforms.RandomResizedCrop` (10 attempts, then a centre crop clamped to `ratio`),
    resizes it to `size` with `resample`, and flips it left-right with probability `hflip`.

    Args:
        image: PIL image or uint8 array ((H, W), (H, W, C) or (C, H, W)); converted to RGB.
        size: output size, an int (square) or (height, width).
        rng: a `numpy.random.Generator`, an int seed, or None (fresh OS entropy on every call, which is safe in
            DataLoader worker processes; a fixed Generator is copied into every forked worker).

    Returns:
        `PIL.Image.Image` (mode RGB) of size `size`. Feed it to the image processor with `do_resize=False,
        do_center_crop=False` (see [`DartTrainTransform`]).
    """
    out_h, out_w = _pair(size, "size")
    lo, hi = float(scale[0]), float(scale[1])
    if not 0 < lo <= hi:
        raise ValueError(f"`scale` must satisfy 0 < scale[0] <= scale[1]; got {scale!r}.")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"`ratio` must satisfy 0 < ratio[0] <= ratio[1]; got {ratio!r}.")
    if not 0.0 <= hflip <= 1.0:
        raise ValueError(f"`hflip` is a probability in [0, 1]; got {hflip!r}.")
    rng = np.random.default_rng(rng)
    pil = _to_pil_rgb(image)
    width, height = pil.size
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))

    box = None
    for _ in range(10):
        target_area = area * rng.uniform(lo, hi)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # fallback: central crop with the aspect ratio clamped to `ratio`
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            w, h = int(round(height * ratio[1])), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
        box = (left, top, left + w, top + h)

    out = pil.crop(box).resize((out_w, out_h), resample=resample)
    if rng.uniform() < hflip:
        out = out.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    return out


class PerWorkerGenerator:
    """numpy random generators for data augmentation, one per DataLoader worker.

    Calling it returns the generator of the calling worker (the main process counts as worker -1), seeded from
    `(seed, worker)`: runs repeat exactly, and workers, which each get a copy of the object holding it, do not all draw
    the same numbers. With `seed=None` every call returns a generator on fresh OS entropy.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._generators: dict[int, np.random.Generator] = {}

    def __call__(self) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = -1 if info is None else info.id
        if worker not in self._generators:
            self._generators[worker] = np.random.default_rng([self.seed, worker + 1])
        return self._generators[worker]


class DartTrainTransform:
    """Training transform: [`random_resized_crop_and_flip`] to the processor's crop size, then the processor's
    rescale + normalise (no resize / centre crop). Callable on one image or a list; returns a `BatchFeature`.

    Example with `datasets`:
        ```python
        transform = DartTrainTransform(DartImageProcessor(), seed=None)
        dataset.set_transform(lambda batch: {"pixel_values": transform(batch["image"])["pixel_values"],
                                             "labels": batch["label"]})
        ```
    """

    def __init__(
        self,
        image_processor: DartImageProcessorPil | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        seed: int | None = None,
    ):
        self.image_processor = image_processor if image_processor is not None else DartImageProcessorPil()
        crop = self.image_processor.crop_size
        self.size = (crop.height, crop.width) if crop is not None else (DART_IMAGE_SIZE, DART_IMAGE_SIZE)
        self.scale, self.ratio, self.hflip = scale, ratio, hflip
        self.generators = PerWorkerGenerator(seed)  # seed=None: fresh entropy; an int: a reproducible sequence

    def __call__(self, images: Any, return_tensors: str | None = "pt") -> BatchFeature:
        batch = images if isinstance(images, (list, tuple)) else [images]
        if len(batch) == 0:
            raise ValueError("`images` is an empty list; expected at least one image.")
        rng = self.generators()
        crops = [
            random_resized_crop_and_flip(
                image,
                self.size,
                scale=self.scale,
                ratio=self.ratio,
                hflip=self.hflip,
                rng=rng,
                resample=self.image_processor.resample,
            )
            for image in batch
        ]
        return self.image_processor(crops, do_resize=False, do_center_crop=False, return_tensors=return_tensors)
