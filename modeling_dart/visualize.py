"""Pictures of where DART put its tokens (PIL only, no matplotlib).

DART cuts the input into `num_tokens` regions of varying size: fine where the scorer expects content, coarse on the
background. Every token covers an interval of the concatenated strip of token rows, so a token can straddle the end
of one row and the start of the next: it is then drawn as two pieces (see
[`~modeling_dart.partition_dart.token_pieces`]).

Library use:

```python
import modeling_dart
from modeling_dart.visualize import draw_token_regions, render_token_regions
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("outputs/quickstart")
processor = AutoImageProcessor.from_pretrained("outputs/quickstart")
picture = render_token_regions(model, processor, image, show_scores=True)  # PIL.Image
picture.save("tokens.png")
```

Command line (several images give a grid):

```bash
python -m modeling_dart.visualize --model outputs/quickstart img1.png img2.png --out tokens.png --scores
```

DART's second form, the image reshaper (`DartReshaperForImageClassification`), has no tokens: it warps the input into
a smaller image whose rows and columns are thin where the scorer expects content. Its picture is the input with the
warped grid drawn on it (a horizontal line at every row edge, a vertical line at every column edge) and the warped
image beside it ([`draw_reshaper_warp`], [`render_reshaper_warp`]). `render_token_regions` and the command line draw
it on their own for a reshaper model.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .partition_dart import token_pieces

__all__ = [
    "denormalize",
    "draw_reshaper_warp",
    "draw_token_regions",
    "draw_warped_grid",
    "is_reshaper_model",
    "main",
    "make_grid",
    "render_reshaper_warp",
    "render_token_regions",
    "token_geometry",
    "warp_geometry",
]

# Colour ramp for token outlines, from the smallest tokens (warm) to the largest (cool).
_SIZE_RAMP = ((255, 40, 40), (255, 200, 0), (80, 255, 80), (0, 200, 255), (60, 90, 255))
# "Inferno"-like ramp for the score-map overlay (low -> high).
_HEAT_RAMP = ((0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164))
# ImageNet's statistics: the default normalisation of `DartImageProcessor`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Line colour of the reshaper's warped grid.
_GRID_COLOR = (0, 255, 255)


def _ramp(values: np.ndarray, ramp: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 by linear interpolation along `ramp`."""
    anchors = np.asarray(ramp, dtype=np.float64)
    position = np.clip(values, 0.0, 1.0) * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    frac = (position - low)[..., None]
    return np.round(anchors[low] * (1 - frac) + anchors[low + 1] * frac).astype(np.uint8)


def _get(outputs: Any, name: str):
    if isinstance(outputs, Mapping):
        return outputs.get(name)
    return getattr(outputs, name, None)


def token_geometry(outputs: Any, index: int = 0) -> dict[str, Any]:
    """Exact token pieces of image `index` of a batch, in the pixels of the input the model was called on.

    Args:
        outputs: a `DartModelOutput` (or the output of `DartEmbeddings`, or a dict) holding `row_edges`
            `(batch, num_rows + 1)` and `token_edges` `(batch, num_tokens + 1)`; `score_map` is used when present.
            An output that only has `regions` `(batch, num_tokens, 4)` falls back to one box per token
            (the widest piece of a token that straddles two rows).
        index: which image of the batch.

    Returns:
        dict with `pieces` (list of `(token_index, x0, y0, x1, y1)` in input pixels), `input_size` (`(height,
        width)`), `num_tokens`, `exact` (whether the pieces are exact) and `score_map` (`(grid, grid)` numpy array
        or None).
    """
    row_edges, token_edges = _get(outputs, "row_edges"), _get(outputs, "token_edges")
    score_map = _get(outputs, "score_map")
    score = None if score_map is None else score_map[index].detach().float().cpu().numpy()
    if row_edges is not None and token_edges is not None:
        row_edges = row_edges[index : index + 1].detach().double().cpu()
        token_edges = token_edges[index : index + 1].detach().double().cpu()
        num_rows = row_edges.shape[1] - 1
        height = float(row_edges[0, -1])
        width = float(token_edges[0, -1]) / num_rows  # the strip is `num_rows` rows of `width` pixels
        pieces = token_pieces(row_edges, token_edges, round(width))[0]
        return {"pieces": pieces, "input_size": (round(height), round(width)),
                "num_tokens": token_edges.shape[1] - 1, "exact": True, "score_map": score}
    regions = _get(outputs, "regions")
    if regions is None and _get(outputs, "col_edges") is not None:
        raise ValueError(
            "`outputs` is an image reshaper's (`row_edges` and `col_edges`, no tokens): draw it with "
            "`draw_reshaper_warp` (or `render_token_regions`, which picks the reshaper picture for a reshaper model)."
        )
    if regions is None:
        raise ValueError(
            "`outputs` has neither `row_edges`/`token_edges` nor `regions`: pass the output of `DartModel` (e.g. "
            "`model.dart(pixel_values)` for a `DartForImageClassification`), or use `render_token_regions`."
        )
    boxes = regions[index].detach().double().cpu().numpy()
    pieces = [(n, *map(float, box)) for n, box in enumerate(boxes)]
    height = float(boxes[:, 3].max()) if len(boxes) else 0.0
    width = float(boxes[:, 2].max()) if len(boxes) else 0.0
    return {"pieces": pieces, "input_size": (round(height), round(width)), "num_tokens": len(boxes),
            "exact": False, "score_map": score}


def _blend_scores(canvas: PIL.Image.Image, score: np.ndarray, alpha: float) -> PIL.Image.Image:
    """`canvas` with the score map (min to max on the heat ramp, bilinear to the canvas) blended over it."""
    span = float(score.max() - score.min())
    normalised = (score - score.min()) / span if span > 0 else np.full_like(score, 0.5)
    heat = PIL.Image.fromarray(_ramp(normalised, _HEAT_RAMP)).resize(canvas.size, PIL.Image.Resampling.BILINEAR)
    return PIL.Image.blend(canvas, heat, alpha)


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return PIL.ImageFont.load_default()


def draw_token_regions(
    image: PIL.Image.Image | np.ndarray,
    outputs: Any,
    index: int = 0,
    input_size: tuple[int, int] | None = None,
    show_scores: bool = False,
    score_alpha: float = 0.45,
    line_width: int | None = None,
    line_color: tuple[int, int, int] | None = None,
    display_size: int | None = None,
    title: str | None = None,
    pixel_values: torch.Tensor | None = None,
    num_tokens: int | None = None,
) -> PIL.Image.Image:
    """Draw every token's region over `image`.

    Args:
        image (`PIL.Image.Image` or uint8 `(H, W, 3)` array): the picture to draw on: the input the model saw (after
            resizing and cropping), at any display resolution. Token pieces are scaled from input pixels to it.
        outputs: output of `DartModel` / `model.dart(...)` (exact pieces from `row_edges` and `token_edges`), or any
            object/dict with those fields (see [`token_geometry`]); or a DART model, which is then run on
            `pixel_values` (to start from a PIL image and an image processor, use [`render_token_regions`]).
        index (`int`): image of the batch to draw.
        input_size (`(height, width)`, *optional*): size of the model input; inferred from the outputs when omitted.
        show_scores (`bool`): blend the score map (the scorer's belief about where the content is) over the image.
        score_alpha (`float`): opacity of the score overlay.
        line_width (`int`, *optional*): outline width in display pixels (default: 1 per 300 px of the shorter side).
        line_color (`(r, g, b)`, *optional*): one outline colour for all tokens. By default tokens are coloured by
            area: red/yellow for the smallest, blue for the largest.
        display_size (`int`, *optional*): resize the picture so that its longer side has this many pixels.
        title (`str`, *optional*): a caption drawn in a band above the picture.
        pixel_values (`torch.Tensor` of shape `(batch, 3, height, width)`, *optional*): model input, when `outputs` is
            a model.
        num_tokens (`int`, *optional*): tokens for that call, when `outputs` is a model.

    Returns:
        `PIL.Image.Image` (RGB).
    """
    if isinstance(outputs, torch.nn.Module):
        if pixel_values is None:
            raise ValueError(
                "`outputs` is a model: pass the `pixel_values` it should run on, or use `render_token_regions(model, "
                "image_processor, image)`."
            )
        base = getattr(outputs, "base_model", outputs)
        parameter = next(base.parameters())
        with torch.no_grad():
            outputs = base(pixel_values.to(device=parameter.device, dtype=parameter.dtype), num_tokens=num_tokens,
                           return_dict=True)
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))
    canvas = image.convert("RGB")
    if display_size is not None:
        factor = display_size / max(canvas.size)
        canvas = canvas.resize(
            (max(1, round(canvas.width * factor)), max(1, round(canvas.height * factor))), PIL.Image.Resampling.BICUBIC
        )
    geometry = token_geometry(outputs, index)
    in_h, in_w = input_size if input_size is not None else geometry["input_size"]
    sx, sy = canvas.width / max(in_w, 1e-6), canvas.height / max(in_h, 1e-6)

    if show_scores and geometry["score_map"] is not None:
        canvas = _blend_scores(canvas, geometry["score_map"], score_alpha)

    pieces = geometry["pieces"]
    width = line_width or max(1, round(min(canvas.size) / 300))
    draw = PIL.ImageDraw.Draw(canvas)
    areas: dict[int, float] = {}
    for n, x0, y0, x1, y1 in pieces:
        areas[n] = areas.get(n, 0.0) + (x1 - x0) * (y1 - y0)
    log_areas = {n: math.log(max(a, 1e-6)) for n, a in areas.items()}
    lo, hi = (min(log_areas.values()), max(log_areas.values())) if log_areas else (0.0, 0.0)
    for n, x0, y0, x1, y1 in pieces:
        if line_color is not None:
            color = tuple(line_color)
        else:
            t = (log_areas[n] - lo) / (hi - lo) if hi > lo else 0.5
            color = tuple(int(c) for c in _ramp(np.asarray(t), _SIZE_RAMP))
        box = [x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1]
        box = [round(v) for v in box]
        box[2], box[3] = max(box[2], box[0]), max(box[3], box[1])
        draw.rectangle(box, outline=color, width=width)

    return _with_title(canvas, title)


def _with_title(canvas: PIL.Image.Image, title: str | None) -> PIL.Image.Image:
    """`canvas` under a white band holding `title` (unchanged without a title)."""
    if not title:
        return canvas
    font_size = max(10, canvas.width // 24)
    font = _font(font_size)
    band = font_size + 8
    framed = PIL.Image.new("RGB", (canvas.width, canvas.height + band), (255, 255, 255))
    framed.paste(canvas, (0, band))
    PIL.ImageDraw.Draw(framed).text((4, 3), title, fill=(0, 0, 0), font=font)
    return framed


def _displayed_input(image_processor, image: PIL.Image.Image, pixel_values: torch.Tensor) -> PIL.Image.Image:
    """The resized/cropped picture the model saw, in uint8: the processor's geometry without rescale/normalise."""
    try:
        raw = image_processor(image, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
        array = np.asarray(raw, dtype=np.float32)
        if array.shape[0] in (1, 3) and array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
        if array.shape[:2] == tuple(pixel_values.shape[-2:]):
            return PIL.Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8).squeeze())
    except (TypeError, ValueError, KeyError):  # a processor without these flags: undo the normalisation instead
        pass
    return denormalize(pixel_values[0], *_normalization(image_processor))


def _normalization(image_processor) -> tuple:
    """`(image_mean, image_std, rescale_factor)` of a processor: what `denormalize` undoes (the identity where the
    processor has none)."""
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    factor = (getattr(image_processor, "rescale_factor", None) or 1 / 255) \
        if getattr(image_processor, "do_rescale", True) else 1.0
    if not getattr(image_processor, "do_normalize", True):
        mean = std = None
    return (0.0 if mean is None else mean), (1.0 if std is None else std), factor


def denormalize(pixel_values: torch.Tensor, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                rescale_factor: float = 1 / 255) -> PIL.Image.Image:
    """One image of normalised pixels back to an RGB picture: `(x * image_std + image_mean) / rescale_factor`,
    rounded and clipped to 0..255 (the inverse of an image processor's rescale and normalise).

    Args:
        pixel_values (`torch.Tensor` of shape `(channels, height, width)`).
        image_mean, image_std (`float` or one per channel): the processor's (defaults: ImageNet's, as
            [`DartImageProcessor`]'s).
        rescale_factor (`float`): the processor's (1 / 255).

    Returns:
        `PIL.Image.Image` (RGB; a single channel is grey).
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 3:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"`pixel_values` must be one image of shape (channels, height, width), got {shape}.")
    channels = pixel_values.shape[0]
    mean = np.broadcast_to(np.asarray(image_mean, dtype=np.float32).reshape(-1), (channels,))
    std = np.broadcast_to(np.asarray(image_std, dtype=np.float32).reshape(-1), (channels,))
    array = pixel_values.detach().float().cpu().numpy().transpose(1, 2, 0) * std + mean
    array = np.clip(np.round(array / rescale_factor), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(array[..., 0] if channels == 1 else array).convert("RGB")


@torch.no_grad()
def render_token_regions(
    model: torch.nn.Module,
    image_processor,
    image: PIL.Image.Image,
    num_tokens: int | None = None,
    show_scores: bool = False,
    display_size: int | None = 384,
    show_prediction: bool = True,
    **draw_kwargs,
) -> PIL.Image.Image:
    """Run `model` (a `DartForImageClassification` or `DartModel`) on one PIL image and draw its token regions.

    The image goes through `image_processor` (resize + centre crop + normalise); the picture shows the crop the model
    saw, with the token pieces (input pixels) scaled onto it. For a classifier the caption gives the top prediction.
    A reshaper model (see [`is_reshaper_model`]) has no tokens: its warp is drawn instead ([`render_reshaper_warp`]).

    Args:
        model: a DART model (its base model must return `row_edges` / `token_edges`).
        image_processor: the model's image processor (e.g. `AutoImageProcessor.from_pretrained(folder)`).
        image (`PIL.Image.Image`): any size; converted to RGB.
        num_tokens (`int`, *optional*): tokens for this call (defaults to `config.num_tokens`).
        show_scores (`bool`): blend the score map over the picture.
        display_size (`int`, *optional*): longer side of the picture in pixels (None: the model's input size).
        show_prediction (`bool`): caption with the predicted label (classifiers) and the token count.
        draw_kwargs: passed to [`draw_token_regions`].

    Returns:
        `PIL.Image.Image` (RGB).
    """
    if is_reshaper_model(model):
        if num_tokens is not None:
            raise ValueError(f"`num_tokens` ({num_tokens!r}) applies to token DART; {type(model).__name__} is an "
                             "image reshaper, which has no tokens (leave `num_tokens` out).")
        return render_reshaper_warp(model, image_processor, image, show_scores=show_scores, display_size=display_size,
                                    show_prediction=show_prediction, **draw_kwargs)
    image = image.convert("RGB")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
    base = getattr(model, "base_model", model)
    captured: list = []
    handle = base.register_forward_hook(lambda module, args, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        outputs = model(pixel_values=pixel_values, num_tokens=num_tokens, return_dict=True)
    finally:
        handle.remove()
        model.train(was_training)
    base_outputs = captured[-1] if captured else outputs
    if isinstance(base_outputs, tuple):  # return_dict=False somewhere along the way: fall back to the top output
        base_outputs = outputs
    title = None
    if show_prediction:
        count = token_geometry(base_outputs)["num_tokens"]
        title = f"{count} tokens"
        logits = _get(outputs, "logits")
        if logits is not None:
            probabilities = logits[0].float().softmax(-1)
            label_id = int(probabilities.argmax())
            id2label = getattr(model.config, "id2label", None) or {}
            label = id2label.get(label_id, id2label.get(str(label_id), str(label_id)))
            title = f"{label} ({probabilities[label_id]:.0%}), {count} tokens"
    displayed = _displayed_input(image_processor, image, pixel_values)
    return draw_token_regions(
        displayed,
        base_outputs,
        input_size=tuple(pixel_values.shape[-2:]),
        show_scores=show_scores,
        display_size=display_size,
        title=title,
        **draw_kwargs,
    )


# ------------------------------------------------------------------------------------------- the image reshaper
def is_reshaper_model(model: Any) -> bool:
    """Whether `model` is DART's image-reshaper form (a `DartReshaperForImageClassification`, also from remote code,
    or a bare `DartImageReshaper`), whose picture is the warp rather than token regions."""
    from .reshaper_dart import DartImageReshaper

    return isinstance(model, DartImageReshaper) or \
        getattr(getattr(model, "config", None), "model_type", None) == "dart_reshaper"


def warp_geometry(outputs: Any, index: int = 0) -> dict[str, Any]:
    """The warp of image `index` of a batch, from a reshaper's output.

    Args:
        outputs: the output of `DartReshaperForImageClassification` or `DartImageReshaper` (or a dict) holding
            `row_edges` `(batch, num_rows + 1)` and `col_edges` `(batch, num_cols + 1)` in input pixels;
            `warped_pixel_values` and `score_map` are used when present.
        index (`int`): which image of the batch.

    Returns:
        dict with `row_edges` and `col_edges` (float64 numpy arrays, input pixels), `input_size` (`(height, width)`:
        the last edges, rounded), `warped_size` (`(h, w)` of the warped image, or None) and `score_map` (numpy array
        or None).
    """
    row_edges, col_edges = _get(outputs, "row_edges"), _get(outputs, "col_edges")
    if row_edges is None or col_edges is None:
        raise ValueError(
            "`outputs` has no `row_edges` / `col_edges`: pass the output of `DartReshaperForImageClassification` or "
            "`DartImageReshaper` (for token DART, use `draw_token_regions`)."
        )
    for name, edges in (("row_edges", row_edges), ("col_edges", col_edges)):
        if not isinstance(edges, torch.Tensor) or edges.dim() != 2 or edges.shape[1] < 2:
            shape = tuple(edges.shape) if isinstance(edges, torch.Tensor) else type(edges).__name__
            raise ValueError(f"`outputs.{name}` must be a tensor of shape (batch, num_bands + 1), got {shape}.")
    if not -row_edges.shape[0] <= index < row_edges.shape[0]:
        raise ValueError(f"`index` must pick an image of the batch of {row_edges.shape[0]}, got {index}.")
    rows = row_edges[index].detach().double().cpu().numpy()
    cols = col_edges[index].detach().double().cpu().numpy()
    warped = _get(outputs, "warped_pixel_values")
    score_map = _get(outputs, "score_map")
    return {
        "row_edges": rows,
        "col_edges": cols,
        "input_size": (round(float(rows[-1])), round(float(cols[-1]))),
        "warped_size": None if warped is None else tuple(warped.shape[-2:]),
        "score_map": None if score_map is None else score_map[index].detach().float().cpu().numpy(),
    }


def _line_starts(edges: np.ndarray, scale: float, extent: int, width: int) -> list[int]:
    """First display pixel of the line of each edge: `width` pixels centred on pixel `round(edge * scale)`, moved
    inside `[0, extent)` (the last edge, at the input's border, falls on the last pixel)."""
    return [min(max(round(float(edge) * scale - (width - 1) / 2), 0), max(extent - width, 0)) for edge in edges]


def draw_warped_grid(
    image: PIL.Image.Image | np.ndarray,
    outputs: Any,
    index: int = 0,
    input_size: tuple[int, int] | None = None,
    show_scores: bool = False,
    score_alpha: float = 0.45,
    line_width: int | None = None,
    line_color: tuple[int, int, int] | None = None,
    display_size: int | None = None,
) -> PIL.Image.Image:
    """Draw the reshaper's warped grid over `image`: a horizontal line at every row edge and a vertical line at every
    column edge (the borders included), so that each cell of the grid is the part of the input that one
    `patch_size x patch_size` cell of the warped image reads. Thin bands are where the scorer put the content.

    Args:
        image (`PIL.Image.Image` or uint8 `(H, W, 3)` array): the input the model saw (after resizing and cropping),
            at any display resolution; edges are scaled from input pixels to it.
        outputs: see [`warp_geometry`].
        index (`int`): image of the batch to draw.
        input_size (`(height, width)`, *optional*): size of the model input; read from the last edges when omitted.
        show_scores (`bool`): blend the score map over the image.
        score_alpha (`float`): opacity of the score overlay.
        line_width (`int`, *optional*): in display pixels (default: 1 per 300 px of the shorter side).
        line_color (`(r, g, b)`, *optional*): defaults to cyan.
        display_size (`int`, *optional*): resize the picture so that its longer side has this many pixels.

    Returns:
        `PIL.Image.Image` (RGB).
    """
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(np.asarray(image, dtype=np.uint8))
    canvas = image.convert("RGB")
    if display_size is not None:
        factor = display_size / max(canvas.size)
        canvas = canvas.resize(
            (max(1, round(canvas.width * factor)), max(1, round(canvas.height * factor))), PIL.Image.Resampling.BICUBIC
        )
    geometry = warp_geometry(outputs, index)
    in_h, in_w = input_size if input_size is not None else geometry["input_size"]
    sx, sy = canvas.width / max(in_w, 1e-6), canvas.height / max(in_h, 1e-6)
    if show_scores and geometry["score_map"] is not None:
        canvas = _blend_scores(canvas, geometry["score_map"], score_alpha)
    width = line_width or max(1, round(min(canvas.size) / 300))
    color = tuple(line_color) if line_color is not None else _GRID_COLOR
    draw = PIL.ImageDraw.Draw(canvas)
    for top in _line_starts(geometry["row_edges"], sy, canvas.height, width):
        draw.rectangle([0, top, canvas.width - 1, top + width - 1], fill=color)
    for left in _line_starts(geometry["col_edges"], sx, canvas.width, width):
        draw.rectangle([left, 0, left + width - 1, canvas.height - 1], fill=color)
    return canvas


def draw_reshaper_warp(
    image: PIL.Image.Image | np.ndarray,
    outputs: Any,
    index: int = 0,
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
    rescale_factor: float = 1 / 255,
    pad: int = 4,
    title: str | None = None,
    pixel_values: torch.Tensor | None = None,
    **grid_kwargs,
) -> PIL.Image.Image:
    """The reshaper's picture: the input with the warped grid ([`draw_warped_grid`]) and, beside it, the warped image
    that the backbone classified, de-normalised with the processor's statistics and shown at the height of the input
    picture (nearest-neighbour: every warped pixel a block of the same colour).

    Args:
        image (`PIL.Image.Image` or uint8 `(H, W, 3)` array): the input the model saw, at any display resolution.
        outputs: output of `DartReshaperForImageClassification` / `DartImageReshaper` (see [`warp_geometry`]; it
            must hold `warped_pixel_values`), or such a model, which is then run on `pixel_values`.
        index (`int`): image of the batch to draw.
        image_mean, image_std, rescale_factor: the image processor's, to undo its normalisation of the warped pixels
            (defaults: [`DartImageProcessor`]'s).
        pad (`int`): white pixels between the two pictures.
        title (`str`, *optional*): a caption drawn in a band above the pictures.
        pixel_values (`torch.Tensor` of shape `(batch, channels, height, width)`, *optional*): model input, when
            `outputs` is a model.
        grid_kwargs: passed to [`draw_warped_grid`] (`input_size`, `show_scores`, `score_alpha`, `line_width`,
            `line_color`, `display_size`).

    Returns:
        `PIL.Image.Image` (RGB).
    """
    if isinstance(outputs, torch.nn.Module):
        if pixel_values is None:
            raise ValueError(
                "`outputs` is a model: pass the `pixel_values` it should run on, or use `render_reshaper_warp(model, "
                "image_processor, image)`."
            )
        parameter = next(outputs.parameters(), None)
        if parameter is not None:
            pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            outputs = outputs(pixel_values=pixel_values)
    warped = _get(outputs, "warped_pixel_values")
    if warped is None:
        raise ValueError("`outputs` has no `warped_pixel_values`: pass the output of "
                         "`DartReshaperForImageClassification` or `DartImageReshaper`.")
    grid = draw_warped_grid(image, outputs, index=index, **grid_kwargs)
    warped_picture = denormalize(warped[index], image_mean, image_std, rescale_factor)
    height = grid.height
    width = max(1, round(warped_picture.width * height / warped_picture.height))
    warped_picture = warped_picture.resize((width, height), PIL.Image.Resampling.NEAREST)
    canvas = PIL.Image.new("RGB", (grid.width + pad + width, height), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    canvas.paste(warped_picture, (grid.width + pad, 0))
    return _with_title(canvas, title)


@torch.no_grad()
def render_reshaper_warp(
    model: torch.nn.Module,
    image_processor,
    image: PIL.Image.Image,
    output_size: int | tuple[int, int] | None = None,
    show_scores: bool = False,
    display_size: int | None = 384,
    show_prediction: bool = True,
    **draw_kwargs,
) -> PIL.Image.Image:
    """Run a reshaper model (`DartReshaperForImageClassification` or `DartImageReshaper`) on one PIL image and draw
    its warp: the crop the model saw with the warped grid, and the warped image beside it ([`draw_reshaper_warp`]).
    For a classifier the caption gives the top prediction.

    Args:
        model: a reshaper model.
        image_processor: the model's image processor; its mean / std undo the warped image's normalisation.
        image (`PIL.Image.Image`): any size; converted to RGB.
        output_size (`int` or `(int, int)`, *optional*): the warped size for this call.
        show_scores (`bool`): blend the score map over the input picture.
        display_size (`int`, *optional*): longer side of the input picture in pixels (None: the model's input size).
        show_prediction (`bool`): caption with the predicted label (classifiers) and the warped size.
        draw_kwargs: passed to [`draw_reshaper_warp`].

    Returns:
        `PIL.Image.Image` (RGB).
    """
    image = image.convert("RGB")
    parameter = next(model.parameters(), None)
    pixel_values = image_processor(image, return_tensors="pt")["pixel_values"]
    if parameter is not None:
        pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        outputs = model(pixel_values=pixel_values, output_size=output_size)
    finally:
        model.train(was_training)
    title = None
    if show_prediction:
        h, w = _get(outputs, "warped_pixel_values").shape[-2:]
        title = f"warped {h}x{w}"
        logits = _get(outputs, "logits")
        if logits is not None:
            probabilities = logits[0].float().softmax(-1)
            label_id = int(probabilities.argmax())
            id2label = getattr(model.config, "id2label", None) or {}
            label = id2label.get(label_id, id2label.get(str(label_id), str(label_id)))
            title = f"{label} ({probabilities[label_id]:.0%}), {title}"
    mean, std, factor = _normalization(image_processor)
    return draw_reshaper_warp(
        _displayed_input(image_processor, image, pixel_values),
        outputs,
        image_mean=mean,
        image_std=std,
        rescale_factor=factor,
        input_size=tuple(pixel_values.shape[-2:]),
        show_scores=show_scores,
        display_size=display_size,
        title=title,
        **draw_kwargs,
    )


def make_grid(images: Sequence[PIL.Image.Image], columns: int | None = None, pad: int = 4,
              background: tuple[int, int, int] = (255, 255, 255)) -> PIL.Image.Image:
    """Tile pictures into a grid (row-major), each cell the size of the largest picture."""
    if not images:
        raise ValueError("`images` is empty.")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    grid = PIL.Image.new("RGB", (columns * cell_w + (columns + 1) * pad, rows * cell_h + (rows + 1) * pad), background)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(image.convert("RGB"), (pad + c * (cell_w + pad), pad + r * (cell_h + pad)))
    return grid


def load_model_and_processor(model_path: str, trust_remote_code: bool = False):
    """A DART classifier (token or reshaper form, or a bare model) and its image processor from a saved folder or Hub
    id."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    from . import DartImageProcessor

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    auto = AutoModelForImageClassification if any("Classification" in a for a in architectures) else AutoModel
    model = auto.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    try:
        processor = AutoImageProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):  # no preprocessor_config.json: the DeiT recipe at the model's resolution
        size = config.image_size
        processor = DartImageProcessor(size={"shortest_edge": int(size / 0.875)},
                                       crop_size={"height": size, "width": size})
    return model.eval(), processor


def main(argv: Sequence[str] | None = None) -> PIL.Image.Image:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_dart.visualize",
        description="Draw where a DART model puts its tokens (fine on the content, coarse on the background); for a "
        "reshaper model, its warped grid on the input and the warped image beside it.",
    )
    parser.add_argument("images", nargs="+", help="image files (several give a grid)")
    parser.add_argument("--model", required=True, help="a saved DART folder or Hub id")
    parser.add_argument("--out", default="token_regions.png", help="output picture (PNG)")
    parser.add_argument("--num_tokens", type=int, default=None,
                        help="tokens per image (default: the config's; token DART only)")
    parser.add_argument("--scores", action="store_true", help="blend the score map over the images")
    parser.add_argument("--display_size", type=int, default=384, help="longer side of each picture in pixels")
    parser.add_argument("--columns", type=int, default=None, help="grid columns (default: about sqrt(#images))")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)

    model, processor = load_model_and_processor(args.model, trust_remote_code=args.trust_remote_code)
    if args.num_tokens is not None and is_reshaper_model(model):
        parser.error(f"--num_tokens: {args.model} holds an image reshaper model, which has no tokens (its picture is "
                     "the warp); leave --num_tokens out.")
    pictures = []
    for path in args.images:
        with PIL.Image.open(path) as image:
            pictures.append(render_token_regions(model, processor, image, num_tokens=args.num_tokens,
                                                 show_scores=args.scores, display_size=args.display_size))
    picture = pictures[0] if len(pictures) == 1 else make_grid(pictures, columns=args.columns)
    picture.save(args.out)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {len(pictures)} image(s))")
    return picture


if __name__ == "__main__":
    main()
