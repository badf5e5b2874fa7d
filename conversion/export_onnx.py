#!/usr/bin/env python
"""Export a DART model folder to ONNX (`torch.onnx.export(..., dynamo=True)`) with a dynamic batch axis, and verify it
with onnxruntime.

    python conversion/export_onnx.py MODEL_DIR [--output MODEL_DIR/model.onnx] [--overwrite] [--batch_size 2]
        [--no_verify] [--atol 1e-4]

The graph takes `pixel_values` (`(batch, channels, image_size, image_size)`, or `(batch, num_frames, channels, size,
size)` for VideoMamba folders: the trained input size; the batch is dynamic) and returns `logits`, `regions` (token
boxes in input pixels) and `score_map`. It is written to `MODEL_DIR/model.onnx` (weights inside the file); an existing
file is replaced only with `--overwrite`. Verification runs the file with onnxruntime on CPU at the export batch size
and at batch size 1 and compares the logits with PyTorch's (max abs difference at most `--atol`): exit 1 when they
differ, 2 for bad input (not a DART folder, existing output), 0 otherwise. Needs the `onnx` extra (onnxscript,
onnxruntime: `pip install -e ".[onnx]"`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart import DartConfig, DartForImageClassification, DartVideoMambaForVideoClassification  # noqa: E402

OUTPUT_NAMES = ("logits", "regions", "score_map")


class ExportError(ValueError):
    """Bad input for the exporter (reported with exit code 2)."""


class DartOnnxModule(nn.Module):
    """`pixel_values -> (logits, regions, score_map)`: the tensors of a DART classifier's output that an ONNX graph
    returns (a graph returns tensors, not a `ModelOutput`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor):
        out = self.model(pixel_values=pixel_values, return_dict=True)
        return out.logits, out.regions, out.score_map


def load_dart_folder(folder: str | Path) -> nn.Module:
    """The classifier saved in `folder`, in eval mode. Raises `ExportError` unless it is a DART model folder."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise ExportError(f"{folder} is not a folder; give the folder of a saved DART model (config.json + weights).")
    if not config_file.is_file():
        raise ExportError(f"{folder} has no config.json: not a saved model folder.")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ExportError(f"{config_file} is not a valid model config ({error}).") from error
    if model_type != DartConfig.model_type:
        raise ExportError(f"{folder} holds a {model_type!r} model, not a DART model (model_type 'dart').")
    config = DartConfig.from_pretrained(folder)
    model_class = DartVideoMambaForVideoClassification if config.backbone == "videomamba" else DartForImageClassification
    try:
        model = model_class.from_pretrained(folder)
    except OSError as error:
        raise ExportError(f"cannot load the weights of {folder}: {error}") from error
    return model.eval()


def example_inputs(config: DartConfig, batch_size: int, seed: int = 0) -> torch.Tensor:
    """Random normalised pixels of the model's trained input size."""
    size = (config.num_channels, config.image_size, config.image_size)
    if config.backbone == "videomamba":
        size = (config.num_frames, *size)
    return torch.randn(batch_size, *size, generator=torch.Generator().manual_seed(seed))


def export(model: nn.Module, path: str | Path, batch_size: int = 2) -> Path:
    """Write `model` (a DART classifier in eval mode) to `path` as ONNX with a dynamic batch axis."""
    path = Path(path)
    inputs = example_inputs(model.config, batch_size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            DartOnnxModule(model).eval(),
            (inputs,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"pixel_values": {0: batch}},
            external_data=False,
            verbose=False,
        )
    program.save(str(path))
    return path


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(model: nn.Module, session, pixel_values: torch.Tensor) -> dict[str, float]:
    """Max abs difference between onnxruntime's outputs and PyTorch's, per output."""
    with torch.no_grad():
        expected = DartOnnxModule(model)(pixel_values)
    got = session.run(list(OUTPUT_NAMES), {"pixel_values": pixel_values.numpy()})
    return {name: float((torch.from_numpy(g) - e).abs().max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a folder written by save_pretrained (DART image or video classifier)")
    parser.add_argument("--output", default=None, help="ONNX file to write (default: MODEL_DIR/model.onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--batch_size", type=int, default=2, help="batch size of the traced example (default 2)")
    parser.add_argument("--no_verify", action="store_true", help="skip the onnxruntime check")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |logits difference| (1e-4)")
    args = parser.parse_args(argv)

    try:
        if args.batch_size < 1:
            raise ExportError(f"--batch_size must be at least 1, got {args.batch_size}.")
        output = Path(args.output) if args.output else Path(args.model_dir) / "model.onnx"
        if output.exists() and not args.overwrite:
            raise ExportError(f"{output} exists; pass --overwrite to replace it.")
        model = load_dart_folder(args.model_dir)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    start = time.perf_counter()
    export(model, output, args.batch_size)
    print(f"wrote {output} ({output.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    if args.no_verify:
        return 0
    session = onnx_session(output)
    worst = 0.0
    for batch_size in sorted({args.batch_size, 1}):
        diffs = compare(model, session, example_inputs(model.config, batch_size, seed=batch_size))
        worst = max(worst, diffs["logits"])
        print(f"onnxruntime vs PyTorch, batch {batch_size}: max |d logits| {diffs['logits']:.2e}, "
              f"|d regions| {diffs['regions']:.2e} px, |d score_map| {diffs['score_map']:.2e}")
    if worst > args.atol:
        print(f"error: onnxruntime's logits differ from PyTorch's by {worst:.2e} > {args.atol:g}", file=sys.stderr)
        return 1
    print("verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
