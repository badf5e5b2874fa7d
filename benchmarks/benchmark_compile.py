"""torch.compile against eager PyTorch: DART-DeiT-S inference on CPU, batch 8 at 448 (196 tokens), random weights.

    python benchmarks/benchmark_compile.py [--threads 2] [--runs 5] [--batch_size 8] [--no_freezing]

`torch.compile(model, fullgraph=True)` with the inductor backend, compiled and run under `torch.no_grad()`; by default
with inductor's `freezing` (weights treated as constants for inference: folded and pre-packed, the usual CPU
inference setting; `--no_freezing` times the plain compile too). The compile time is the first call (tracing,
code generation and the C++ build: much shorter when inductor's on-disk cache is warm; the cold and the warm time are
both printed when the cache is fresh). Before timing, `torch._dynamo.explain` confirms one graph without breaks,
and the compiled logits are compared with eager's (on
white noise and on three views of the bundled photo). Eager and compiled calls are timed interleaved (median of
`--runs` rounds). Target: compiled >= 1.2x faster than eager.

`--breakdown` also profiles one eager and one compiled call (torch.profiler, self CPU time per operator) and splits
each into the library kernels that eager and compiled graphs both call -- matrix products (MKL / oneDNN linear
layers), convolutions (oneDNN), attention (SDPA's CPU flash kernel) -- and everything else (eager's element-wise,
normalisation and indexing operators; the compiled graph's generated C++ kernels). Inductor can only shrink the
"everything else" part, so `eager / (eager's library kernels)` bounds the speed-up a compiled graph can reach while it
calls the same kernels.
"""

from __future__ import annotations

import argparse
import os
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

import torch  # noqa: E402

TARGET = 1.2
# Operators (profiler names) that eager and compiled graphs both hand to a library kernel, by kind.
LIBRARY_KERNELS = {
    "matrix products": ("aten::addmm", "aten::mm", "aten::bmm", "mkl::_mkl_linear", "mkldnn::_linear_pointwise"),
    "convolutions": ("mkldnn::_convolution_pointwise", "mkldnn::_convolution_pointwise_", "aten::mkldnn_convolution",
                     "aten::_convolution", "aten::convolution"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",),
}
PHOTO = Path(__file__).resolve().parent.parent / "conversion" / "assets" / "chelsea.jpg"


def photo_batch() -> torch.Tensor:
    """Three real-image inputs at 448 from the bundled photo (whole, mirrored, a centre crop), normalised with the
    ImageNet mean and std: white noise is the worst case for a sub-pixel move of a token, photos are the use."""
    import numpy as np
    from PIL import Image, ImageOps

    image = Image.open(PHOTO).convert("RGB")
    width, height = image.size
    crop = image.crop((width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    arrays = [(np.asarray(view.resize((448, 448), Image.BICUBIC)) / 255.0 - mean) / std
              for view in (image, ImageOps.mirror(image), crop)]
    return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2)).float()


def compile_model(model, pixel_values, freezing: bool):
    """Compile `model` and run it once; returns (compiled, seconds of the first call)."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    inductor_config.freezing = freezing
    compiled = torch.compile(model, fullgraph=True)
    with Stopwatch() as sw:
        compiled(pixel_values)
    return compiled, sw.seconds


def kernel_breakdown(call, rounds: int = 3) -> dict[str, float]:
    """Seconds per call of `call`, by kind of library kernel (`LIBRARY_KERNELS`) and "everything else": the
    profiler's self CPU time of each operator, which it measures on the calling thread from the operator's start to
    its end (the intra-op threads work inside that span), so the parts add up to about the call's wall time. The
    profiler's own cost falls on the many small eager operators, which makes the ceiling below generous."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(rounds):
            call()
    self_time = {event.key: event.self_cpu_time_total / 1e6 / rounds for event in profiler.key_averages()}
    split = {kind: sum(self_time.get(name, 0.0) for name in names) for kind, names in LIBRARY_KERNELS.items()}
    split["everything else"] = sum(self_time.values()) - sum(split.values())
    return split


def print_breakdown(eager_call, compiled_call) -> None:
    eager, compiled = kernel_breakdown(eager_call), kernel_breakdown(compiled_call)
    eager_total, compiled_total = sum(eager.values()), sum(compiled.values())
    rows = [[kind, f"{eager[kind] * 1e3:.0f}", f"{100 * eager[kind] / eager_total:.1f}%",
             f"{compiled[kind] * 1e3:.0f}", f"{100 * compiled[kind] / compiled_total:.1f}%"] for kind in eager]
    rows.append(["total", f"{eager_total * 1e3:.0f}", "100%", f"{compiled_total * 1e3:.0f}", "100%"])
    print(markdown_table(["profiled call (self CPU ms per call)", "eager", "share", "compiled", "share"], rows))
    print(f"\nCeiling of the compiled speed-up with eager's library kernels: "
          f"{eager_total / (eager_total - eager['everything else']):.2f}x (everything else compiled away)\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs=5, warmup=2)
    parser.add_argument("--no_freezing", action="store_true", help="also time the compile without inductor freezing")
    parser.add_argument("--breakdown", action="store_true",
                        help="profile one eager and one compiled call: library kernels against everything else")
    parser.add_argument("--cold_cache", action="store_true",
                        help="compile into a fresh inductor cache (TORCHINDUCTOR_CACHE_DIR) to time a cold compile")
    args = parser.parse_args(argv)
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="dart_inductor_")
    setup_torch(args.threads, args.seed)
    waited = wait_for_idle(args.wait_for_idle)
    model = build_dart("S", 196)
    pixels = torch.randn(args.batch_size, 3, 448, 448, generator=torch.Generator().manual_seed(args.seed))
    print("# torch.compile vs eager: DART-DeiT-S, CPU\n")
    print_environment(args, {"waited for idle (s)": f"{waited:.0f}", "inductor cache": os.environ.get(
        "TORCHINDUCTOR_CACHE_DIR", "default (may be warm)")})

    explanation = torch._dynamo.explain(model)(pixels[:1])
    print(f"torch._dynamo.explain: {explanation.graph_count} graph(s), {explanation.graph_break_count} graph "
          "break(s)\n")

    variants = [("compiled (freezing)", True)] + ([("compiled", False)] if args.no_freezing else [])
    rows, calls, compile_times, diffs = [], {}, {}, {}
    photos = photo_batch()
    photo_diffs = {}
    with torch.no_grad():
        expected, expected_photos = model(pixels).logits, model(photos).logits
        calls["eager"] = lambda: model(pixels)
        for name, freezing in variants:
            compiled, seconds = compile_model(model, pixels, freezing)
            compile_times[name] = seconds
            diffs[name] = (compiled(pixels).logits - expected).abs().max().item()
            photo_diffs[name] = (compiled(photos).logits - expected_photos).abs().max().item()  # (recompiles once)
            calls[name] = (lambda c: lambda: c(pixels))(compiled)
            print(f"[{name}: first call (compile) {seconds:.1f} s; load {load_average()}]")
        print()
        results = time_interleaved(calls, args.runs, args.warmup)
        if args.breakdown:
            print_breakdown(calls["eager"], calls[variants[0][0]])

    eager = results["eager"]
    rows.append(["eager", f"{eager.median * 1e3:.0f}", f"{eager.minimum * 1e3:.0f}", "1.00x", "-", "-", "-", "-"])
    for name, _ in variants:
        timing = results[name]
        ratio = eager.median / timing.median
        rows.append([name, f"{timing.median * 1e3:.0f}", f"{timing.minimum * 1e3:.0f}",
                     f"{ratio:.2f}x (min-based {eager.minimum / timing.minimum:.2f}x)", f"{compile_times[name]:.0f}",
                     f"{diffs[name]:.1e}", f"{photo_diffs[name]:.1e}", "yes" if ratio >= TARGET else "no"])
    print(markdown_table(["DART-DeiT-S, batch %d at 448" % args.batch_size, "median ms", "min ms",
                          "speed-up vs eager", "compile s", "max |d logits|, noise", "max |d logits|, 3 photos",
                          f">= {TARGET}x?"], rows))
    print(f"\nload average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
