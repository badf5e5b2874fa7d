#!/usr/bin/env python
"""Export a DART image or video classifier folder, or a DART reshaper classifier folder, to ONNX
(`torch.onnx.export(..., dynamo=True)`) with a dynamic batch axis, and verify it with onnxruntime.

    python conversion/export_onnx.py MODEL_DIR [--output MODEL_DIR/model.onnx] [--overwrite] [--batch_size 2]
        [--no_verify] [--atol 1e-4]

The graph takes `pixel_values` (`(batch, channels, image_size, image_size)`, or `(batch, num_frames, channels,
image_size, image_size)` for a DART VideoMamba folder: the trained input size; the batch is dynamic) and returns
`logits`, `regions` (token boxes `(x0, y0, x1, y1)` in input pixels, per frame for videos) and `score_map`; for a
reshaper folder (`model_type: dart_reshaper`, an image classifier behind DART's image reshaper) `logits`, `row_edges`,
`col_edges` (the warp's row and column edges in input pixels) and `score_map`. The weights are stored inside the file.

Before it exports, the script checks every argument and the folder: a DART image classifier (`model_type: dart`),
video classifier (`model_type: dart_video`, or `dart` with `backbone: videomamba` as saved before the video family had
its own model type) or reshaper classifier (`model_type: dart_reshaper`, in front of an image classifier), whose
weights file holds exactly the model's tensors, with their shapes (a missing or mis-shaped tensor would be exported
randomly initialised); `--atol` a finite number >= 0; `--batch_size` in [2, 64]; `--output` a `.onnx` path in an
existing folder, and not an existing file unless `--overwrite` is given.

Verification runs the file with onnxruntime on CPU on crops of the bundled photo (`conversion/assets/chelsea.jpg`) at
batch sizes 1, `--batch_size` and `--batch_size + 1`, and compares with eager PyTorch: the logits within `--atol`, the
token regions (a reshaper's row and column edges) within `REGION_ATOL_PIXELS` input pixels. Images are prepared by
the folder's image processor (the DeiT evaluation recipe at the model's input size when the folder has none). A video model gets clips of `num_frames`
frames, each frame the clip's crop moved by `FRAME_SHIFT_PIXELS` from the previous one, prepared by the folder's video
processor (VideoMamba's evaluation recipe at the model's input size when the folder has none: shorter side resized to
it, centre crop, ImageNet normalisation).

The file is written under a temporary name (`.NAME.PID.partial.onnx`) next to `--output` and renamed to `--output`
once verified (once exported, with `--no_verify`); a failed verification or export deletes the temporary file and
leaves an existing output untouched.

Exit codes: 0 written (and verified), 1 verification failed (nothing written), 2 bad argument or folder (nothing
exported). Needs the `onnx` extra (onnxscript, onnxruntime: `pip install -e ".[onnx]"`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart import (  # noqa: E402
    DartConfig,
    DartForImageClassification,
    DartImageProcessor,
    DartReshaperConfig,
    DartReshaperForImageClassification,
    DartVideoConfig,
    DartVideoMambaForVideoClassification,
    DartVideoProcessor,
)
from modeling_dart.configuration_reshaper_dart import is_image_classifier_config  # noqa: E402
from modeling_dart.conversion_utils import ConversionError, load_complete_model  # noqa: E402

OUTPUT_NAMES = ("logits", "regions", "score_map")
# a reshaper classifier has no tokens: its geometry is the warp's row and column edges, in input pixels
RESHAPER_OUTPUT_NAMES = ("logits", "row_edges", "col_edges", "score_map")

# A traced batch of 1 is specialised by torch.export (the batch axis would not stay dynamic); verification runs eager
# PyTorch and onnxruntime on up to `batch_size + 1` images, which bounds the largest useful trace.
MIN_BATCH_SIZE, MAX_BATCH_SIZE = 2, 64

# Box corners agree to 1/32 of an input pixel: they come from float32 strip coordinates (rows * image_size pixels
# long, spaced 1/2048 px apart at 448) whose rounding the tokenizer scales by the inverse density under an edge, while
# a wrong geometry moves boxes by whole pixels; a 1/32 px shift changes a bilinear sample by 1/32 of a pixel step.
# The reshaper's edges are quantile cuts of the same kind and get the same bound.
REGION_ATOL_PIXELS = 1 / 32

PHOTO = Path(__file__).resolve().parent / "assets" / "chelsea.jpg"
# Verification crops of the photo, as fractions `(left, top, right, bottom)` of its width and height.
PHOTO_CROPS = (
    (0.0, 0.0, 1.0, 1.0),
    (0.0, 0.0, 0.6, 1.0),
    (0.4, 0.0, 1.0, 1.0),
    (0.25, 0.15, 0.75, 0.85),
    (0.0, 0.0, 0.5, 0.5),
    (0.5, 0.5, 1.0, 1.0),
    (0.1, 0.3, 0.9, 0.7),
)

# Verification clips: each frame is the clip's crop moved by this many photo pixels `(right, down)` from the previous
# frame (less where the crop is too small for the clip's frames), so that the frames of a clip differ.
FRAME_SHIFT_PIXELS = (4, 2)

MODEL_TYPES = (DartConfig.model_type, DartVideoConfig.model_type, DartReshaperConfig.model_type)
# a video folder's processor file; `preprocessor_config.json` in folders saved by earlier versions
VIDEO_PROCESSOR_FILES = ("video_preprocessor_config.json", "preprocessor_config.json")


class ExportError(ValueError):
    """Bad input for the exporter (reported with exit code 2)."""


class DartOnnxModule(nn.Module):
    """`pixel_values -> (logits, regions, score_map)` (a reshaper's `(logits, row_edges, col_edges, score_map)`, see
    `output_names`): the tensors of a DART classifier's output that an ONNX graph returns (a graph returns tensors,
    not a `ModelOutput`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.names = output_names(model.config)

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(out[name] for name in self.names)


def is_video(config: DartConfig) -> bool:
    """Whether `config` describes a DART video model (`pixel_values` `(batch, frames, channels, height, width)`)."""
    return isinstance(config, DartVideoConfig)


def is_reshaper(config) -> bool:
    """Whether `config` describes a DART reshaper classifier (no tokens: the warp's edges instead of regions)."""
    return isinstance(config, DartReshaperConfig)


def output_names(config) -> tuple[str, ...]:
    """The graph's outputs for a model of `config`: `OUTPUT_NAMES`, or `RESHAPER_OUTPUT_NAMES` for a reshaper."""
    return RESHAPER_OUTPUT_NAMES if is_reshaper(config) else OUTPUT_NAMES


def geometry_names(config) -> tuple[str, ...]:
    """The outputs in input pixels that verification holds to `REGION_ATOL_PIXELS`."""
    return ("row_edges", "col_edges") if is_reshaper(config) else ("regions",)


def read_dart_config(folder: str | Path) -> DartConfig:
    """The config of the DART model saved in `folder`: a `DartVideoConfig` for a video model (`model_type:
    dart_video`, or `dart` with `backbone: videomamba` as saved before the video family had its own model type), a
    `DartReshaperConfig` for a reshaper classifier (`model_type: dart_reshaper`), else a `DartConfig`. Raises
    `ExportError` unless `folder` holds one (another model type, a reshaper in front of a model that is no image
    classifier, or an invalid config is refused)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; give the folder of a saved DART model (config.json + weights).")
    if not config_file.is_file():
        raise ExportError(f"{folder} has no config.json: not a saved model folder.")
    try:
        raw = json.loads(config_file.read_text())
        model_type = raw.get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ExportError(f"{config_file} is not a valid model config ({error}).") from error
    if model_type not in MODEL_TYPES:
        raise ExportError(f"{folder} holds a {model_type!r} model, not a DART model (model_type "
                          f"{' or '.join(map(repr, MODEL_TYPES))}).")
    # DartConfig builds a DartVideoConfig from a legacy video folder (`backbone: videomamba`)
    config_class = {DartVideoConfig.model_type: DartVideoConfig,
                    DartReshaperConfig.model_type: DartReshaperConfig}.get(model_type, DartConfig)
    try:
        config = config_class.from_pretrained(folder)
    except (ValueError, TypeError) as error:
        raise ExportError(f"{config_file} is not a valid DART config: {error}") from error
    if is_reshaper(config) and not is_image_classifier_config(config.backbone_config):
        raise ExportError(f"{folder} holds a reshaper in front of a {config.backbone_config.model_type!r} model, not "
                          "an image classifier; the exporter takes DART classifiers.")
    return config


def load_dart_folder(folder: str | Path) -> nn.Module:
    """The image, video or reshaper classifier saved in `folder`, in float32 and eval mode. Raises `ExportError`
    unless `folder` is a DART model folder whose weights hold exactly the model's tensors, with their shapes."""
    config = read_dart_config(folder)
    model_class = (DartVideoMambaForVideoClassification if is_video(config) else
                   DartReshaperForImageClassification if is_reshaper(config) else DartForImageClassification)
    try:
        model = load_complete_model(model_class, folder, "MODEL_DIR", config=config, dtype=torch.float32)
    except ConversionError as error:
        raise ExportError(str(error)) from error
    return model.eval()


def input_shape(config: DartConfig) -> tuple[int, ...]:
    """The model's trained input shape without the batch axis: `(channels, size, size)`, or `(frames, channels, size,
    size)` for a video model."""
    size = (config.num_channels, config.image_size, config.image_size)
    return (config.num_frames, *size) if is_video(config) else size


def example_inputs(config: DartConfig, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Random normalised pixels of the model's trained input shape (the example the export traces)."""
    size = input_shape(config)
    return torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))


def export(model: nn.Module, path: str | Path, batch_size: int = 2) -> Path:
    """Write `model` (a DART image, video or reshaper classifier in eval mode) to `path` as ONNX with a dynamic batch
    axis, traced at `batch_size` (in [MIN_BATCH_SIZE, MAX_BATCH_SIZE])."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"export: `batch_size` must be an int, got {type(batch_size).__name__}.")
    if not MIN_BATCH_SIZE <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"export: `batch_size` must be in [{MIN_BATCH_SIZE}, {MAX_BATCH_SIZE}], got {batch_size}.")
    path = Path(path)
    inputs = example_inputs(model.config, batch_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            DartOnnxModule(model).eval(),
            (inputs,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=list(output_names(model.config)),
            dynamic_shapes={"pixel_values": {0: batch}},
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of the ONNX file `path` (`threads` intra-op threads, or onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(model: nn.Module, session, pixel_values: torch.Tensor) -> dict[str, float]:
    """Max abs difference between onnxruntime's outputs and PyTorch's, per output (NaN where either is NaN)."""
    names = output_names(model.config)
    with torch.no_grad():
        expected = DartOnnxModule(model)(pixel_values)
    got = session.run(list(names), {"pixel_values": pixel_values.numpy()})
    return {name: float((torch.from_numpy(g) - e).abs().max()) for name, g, e in zip(names, got, expected)}


def image_processor_for(folder: str | Path, config: DartConfig):
    """The image processor saved in `folder`, or the DeiT evaluation recipe at `config.image_size` (shorter side
    resized to `image_size / 0.875`, centre crop) when `folder` has no `preprocessor_config.json`."""
    folder = Path(folder)
    if (folder / "preprocessor_config.json").is_file():
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ExportError(f"cannot load the image processor of {folder}: {error}") from error
    if config.num_channels != 3:
        raise ExportError(f"{folder} has no preprocessor_config.json and its model takes {config.num_channels} "
                          "channels: save the model's image processor in it, or pass --no_verify.")
    size = config.image_size
    return DartImageProcessor(size={"shortest_edge": int(size / 0.875)}, crop_size={"height": size, "width": size})


def video_processor_for(folder: str | Path, config: DartVideoConfig):
    """The `DartVideoProcessor` saved in `folder` (`VIDEO_PROCESSOR_FILES`), or VideoMamba's evaluation recipe at
    `config.image_size` (shorter side resized to `image_size`, centre crop, ImageNet normalisation) when it has none."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in VIDEO_PROCESSOR_FILES):
        try:
            return DartVideoProcessor.from_pretrained(folder)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ExportError(f"cannot load the video processor of {folder}: {error}") from error
    if config.num_channels != 3:
        raise ExportError(f"{folder} has no {VIDEO_PROCESSOR_FILES[0]} and its model takes {config.num_channels} "
                          "channels: save the model's video processor in it, or pass --no_verify.")
    size = config.image_size
    return DartVideoProcessor(num_frames=config.num_frames, size={"shortest_edge": size},
                              crop_size={"height": size, "width": size})


def _photo_and_crops():
    """The bundled photo (RGB) and the pixel boxes `(left, top, right, bottom)` of `PHOTO_CROPS` in it."""
    from PIL import Image

    with Image.open(PHOTO) as image:
        photo = image.convert("RGB")
    width, height = photo.size
    boxes = [(round(left * width), round(top * height), round(right * width), round(bottom * height))
             for left, top, right, bottom in PHOTO_CROPS]
    return photo, boxes


def photo_batches(processor, batch_sizes) -> list[torch.Tensor]:
    """One `pixel_values` batch per entry of `batch_sizes`: crops of the bundled photo (`PHOTO_CROPS`, in turn across
    the batches), prepared by `processor`."""
    photo, boxes = _photo_and_crops()
    crops = [photo.crop(box) for box in boxes]
    batches, start = [], 0
    for batch_size in batch_sizes:
        images = [crops[(start + i) % len(crops)] for i in range(batch_size)]
        start += batch_size
        batches.append(processor(images, return_tensors="pt")["pixel_values"].to(torch.float32))
    return batches


def _moving_crop(photo, box, num_frames: int) -> list:
    """`num_frames` crops inside `box`, each moved by `FRAME_SHIFT_PIXELS` (at most half the box over the clip) from
    the previous one."""
    left, top, right, bottom = box
    steps = max(num_frames - 1, 1)
    shift_x = min(FRAME_SHIFT_PIXELS[0], (right - left) // 2 // steps)
    shift_y = min(FRAME_SHIFT_PIXELS[1], (bottom - top) // 2 // steps)
    width, height = right - left - shift_x * (num_frames - 1), bottom - top - shift_y * (num_frames - 1)
    return [photo.crop((left + t * shift_x, top + t * shift_y, left + t * shift_x + width, top + t * shift_y + height))
            for t in range(num_frames)]


def photo_clips(processor, batch_sizes, num_frames: int) -> list[torch.Tensor]:
    """One `pixel_values` batch `(batch, num_frames, channels, height, width)` per entry of `batch_sizes`: clips of
    the bundled photo, each a crop of `PHOTO_CROPS` (in turn across the batches) that moves by `FRAME_SHIFT_PIXELS`
    per frame, prepared by the video processor `processor` (every frame kept)."""
    photo, boxes = _photo_and_crops()
    clips = [_moving_crop(photo, box, num_frames) for box in boxes]
    batches, start = [], 0
    for batch_size in batch_sizes:
        videos = [clips[(start + i) % len(clips)] for i in range(batch_size)]
        start += batch_size
        pixel_values = processor(videos, num_frames=num_frames, return_tensors="pt")["pixel_values"]
        batches.append(pixel_values.to(torch.float32))
    return batches


def verification_batches(folder: str | Path, config: DartConfig, batch_size: int) -> list[torch.Tensor]:
    """The photo batches (clips for a video model) that verify an export traced at `batch_size` (sizes 1,
    `batch_size`, `batch_size + 1`). Raises `ExportError` when the folder's processor does not give the model's input
    shape."""
    sizes = sorted({1, batch_size, batch_size + 1})
    if is_video(config):
        batches = photo_clips(video_processor_for(folder, config), sizes, config.num_frames)
        what, unit, files = "video processor", "clip", " or ".join(VIDEO_PROCESSOR_FILES)
    else:
        batches = photo_batches(image_processor_for(folder, config), sizes)
        what, unit, files = "image processor", "image", "preprocessor_config.json"
    wanted = input_shape(config)
    got = tuple(batches[0].shape[1:])
    if got != wanted:
        raise ExportError(f"the {what} of {folder} gives pixel_values of shape {got} per {unit}, the model takes "
                          f"{wanted}; fix {files}, or pass --no_verify.")
    return batches


def check_arguments(args: argparse.Namespace) -> Path:
    """The output path, once every argument is valid. Raises `ExportError` naming the first bad flag."""
    if not (math.isfinite(args.atol) and args.atol >= 0):
        raise ExportError(f"--atol must be a finite number >= 0, got {args.atol}.")
    if not MIN_BATCH_SIZE <= args.batch_size <= MAX_BATCH_SIZE:
        raise ExportError(f"--batch_size must be in [{MIN_BATCH_SIZE}, {MAX_BATCH_SIZE}] (torch.export fixes a traced "
                          f"batch of 1; the graph takes any batch size), got {args.batch_size}.")
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir} is not a folder; give the folder of a saved DART model (config.json + "
                          "weights).")
    output = Path(args.output) if args.output else model_dir / "model.onnx"
    if output.is_dir():
        raise ExportError(f"--output {output} is a folder; give the path of a .onnx file.")
    if output.suffix != ".onnx":
        raise ExportError(f"--output must name a .onnx file, got {output}.")
    if not output.parent.is_dir():
        raise ExportError(f"--output {output}: the folder {output.parent} does not exist.")
    if output.exists() and not args.overwrite:
        raise ExportError(f"--output {output} exists; pass --overwrite to replace it.")
    return output


def verify(model: nn.Module, path: Path, batches: list[torch.Tensor], atol: float) -> str | None:
    """Run the ONNX file `path` on `batches` and compare with `model`; the failure message, or None when onnxruntime's
    logits agree within `atol` and its regions (a reshaper's edges) within `REGION_ATOL_PIXELS`."""
    session = onnx_session(path)
    geometry = geometry_names(model.config)
    worst = dict.fromkeys(("logits", *geometry), 0.0)
    for pixel_values in batches:
        diffs = compare(model, session, pixel_values)
        for name in worst:  # NaN propagates, so a non-finite output fails
            worst[name] = diffs[name] if math.isnan(diffs[name]) else max(worst[name], diffs[name])
        data = f"clips of {PHOTO.name} crops" if pixel_values.dim() == 5 else f"{PHOTO.name} crops"
        pixels = "".join(f", |d {name}| {diffs[name]:.2e} px" for name in geometry)
        print(f"onnxruntime vs PyTorch, {data}, batch {pixel_values.shape[0]}: max |d logits| "
              f"{diffs['logits']:.2e}{pixels}, |d score_map| {diffs['score_map']:.2e}")
    limits = {"logits": atol, **dict.fromkeys(geometry, REGION_ATOL_PIXELS)}
    for name, limit in limits.items():
        if not worst[name] <= limit:
            unit = " px" if name in geometry else ""
            flag = " (--atol)" if name == "logits" else ""
            return f"onnxruntime's {name} differ from PyTorch's by {worst[name]:.2e}{unit} > {limit:g}{unit}{flag}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a folder written by save_pretrained (DART image, video or reshaper "
                        "classifier)")
    parser.add_argument("--output", default=None, help="ONNX file to write (default: MODEL_DIR/model.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--batch_size", type=int, default=2,
                        help=f"batch size of the traced example, {MIN_BATCH_SIZE} to {MAX_BATCH_SIZE} (default 2)")
    parser.add_argument("--no_verify", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |logits difference| (1e-4)")
    args = parser.parse_args(argv)

    try:
        output = check_arguments(args)
        model = load_dart_folder(args.model_dir)
        batches = None if args.no_verify else verification_batches(args.model_dir, model.config, args.batch_size)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # same folder as the output, so that the rename is atomic; written by the exporter, so it gets the usual mode
    partial = output.with_name(f".{output.stem}.{os.getpid()}.partial.onnx")
    try:
        start = time.perf_counter()
        export(model, partial, args.batch_size)
        print(f"exported {partial.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - start:.1f} s")
        if batches is not None:
            failure = verify(model, partial, batches, args.atol)
            if failure is not None:
                print(f"error: {failure}; nothing written", file=sys.stderr)
                return 1
            print("verified")
        if output.exists() and not args.overwrite:
            print(f"error: --output {output} appeared during the export; pass --overwrite to replace it.",
                  file=sys.stderr)
            return 2
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
