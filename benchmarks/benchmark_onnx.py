"""onnxruntime (CPU) against eager PyTorch: DART-DeiT-S and DART-Vim-Ti inference, batch 8 at 448, random weights.

    python benchmarks/benchmark_onnx.py [--threads 2] [--runs 5] [--batch_size 8] [--models deit_s,vim_ti]

Each model is exported with `conversion/export_onnx.py`'s `export` (`torch.onnx.export(..., dynamo=True)`, dynamic
batch axis, traced at batch 2) into a temporary folder, loaded in an onnxruntime CPU session with as many intra-op
threads as PyTorch gets (`--threads`), checked against PyTorch (max |d logits|), then both are timed interleaved
(median of `--runs` rounds after warm-up). The Mamba scan of the exported Vim graph is one ONNX `Scan` node per layer
(`mamba_dart._selective_scan_exported`), not the eager chunked recurrence.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import (
    Stopwatch,
    add_common_arguments,
    load_average,
    markdown_table,
    print_environment,
    setup_torch,
    time_interleaved,
    wait_for_idle,
)
from benchmark_deit import build_dart
from benchmark_vim import build as build_vim_or_deit_ti

import torch  # noqa: E402

import export_onnx  # noqa: E402  (conversion/, on the path through _common)

MODELS = {
    "deit_s": ("DART-DeiT-S", lambda: build_dart("S", 196)),
    "vim_ti": ("DART-Vim-Ti", lambda: build_vim_or_deit_ti("vim", 196)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs=5, warmup=2)
    parser.add_argument("--models", default="deit_s,vim_ti", help=f"comma-separated, of {sorted(MODELS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    setup_torch(args.threads, args.seed)
    waited = wait_for_idle(args.wait_for_idle)
    import onnxruntime

    print("# onnxruntime vs eager PyTorch, CPU\n")
    print_environment(args, {"onnxruntime": onnxruntime.__version__, "waited for idle (s)": f"{waited:.0f}"})
    pixels = torch.randn(args.batch_size, 3, 448, 448, generator=torch.Generator().manual_seed(args.seed))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for key in names:
            title, build = MODELS[key]
            model = build()
            path = Path(folder) / f"{key}.onnx"
            with Stopwatch() as export_time:
                export_onnx.export(model, path, batch_size=2)
            session = export_onnx.onnx_session(path, threads=args.threads)
            diffs = export_onnx.compare(model, session, pixels)
            feed = {"pixel_values": pixels.numpy()}
            print(f"[{title}: exported in {export_time.seconds:.0f} s ({path.stat().st_size / 2**20:.0f} MiB), "
                  f"max |d logits| {diffs['logits']:.1e}; load {load_average()}]")
            with torch.no_grad():
                timings = time_interleaved({"eager": lambda: model(pixels),
                                            "onnxruntime": lambda: session.run(["logits"], feed)},
                                           args.runs, args.warmup)
            eager, ort = timings["eager"], timings["onnxruntime"]
            rows.append([title, f"{eager.median * 1e3:.0f}", f"{ort.median * 1e3:.0f}",
                         f"{eager.median / ort.median:.2f}x (min-based {eager.minimum / ort.minimum:.2f}x)",
                         f"{export_time.seconds:.0f}", f"{diffs['logits']:.1e}"])
    print()
    print(markdown_table([f"batch {args.batch_size} at 448", "eager PyTorch ms", "onnxruntime ms",
                          "onnxruntime speed-up", "export s", "max |d logits|"], rows))
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
