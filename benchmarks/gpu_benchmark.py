"""GPU timings for `benchmarks/gpu_check.sh`, printed as one markdown table.

    python benchmarks/gpu_benchmark.py [--runs 10] [--batch_size 8] [--status "name=value" ...]
    python benchmarks/gpu_benchmark.py --smoke      # tiny models on the CPU: checks this script, times nothing real

Rows:
- the Mamba mixer (one bidirectional layer, width 192, state 16, sequence 197, batch 8): forward and forward+backward,
  mamba-ssm / causal-conv1d kernel path against the PyTorch path (when the kernels import);
- DART-DeiT-S (196 tokens, input 448) against Transformers' DeiT-S (input 224), random weights, inference: eager
  float32, `torch.compile` float32, and eager bfloat16 (the DART scorer stays float32, as in every half-precision DART
  model).
`--status` adds rows reported by the shell script (installation, kernel tests). Times are medians of `--runs`
interleaved rounds after warm-up, with `torch.cuda.synchronize()` around every call.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import markdown_table

import torch  # noqa: E402


def timed(calls: dict, runs: int, warmup: int, sync) -> dict[str, float]:
    """Median seconds per call, interleaved rounds."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    sync()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mixer_rows(device, args, sync) -> list[list[str]]:
    from modeling_dart.mamba_dart import DartBiMambaMixer
    from modeling_dart.selective_scan_dart import is_mamba_kernel_available

    width, length = (32, 17) if args.smoke else (192, 197)
    torch.manual_seed(0)
    mixer = DartBiMambaMixer(width, state_size=16).to(device)
    hidden = torch.randn(args.batch_size, length, width, device=device)
    if not (device.type == "cuda" and is_mamba_kernel_available()):
        reason = "CPU smoke run" if device.type != "cuda" else "mamba-ssm / causal-conv1d do not import"
        with torch.no_grad():
            torch_only = timed({"pytorch": lambda: mixer(hidden)}, args.runs, args.warmup, sync)["pytorch"]
        return [["Mamba mixer forward (PyTorch path)", f"{torch_only * 1e3:.2f}", "-", f"kernel path n/a: {reason}"]]

    def path(use_kernels, backward):
        def call():
            mixer.use_kernels = use_kernels
            if backward:
                x = hidden.detach().requires_grad_(True)
                mixer(x).sum().backward()
            else:
                with torch.no_grad():
                    mixer(hidden)
        return call

    rows = []
    for label, backward in (("forward", False), ("forward+backward", True)):
        result = timed({"kernel": path(True, backward), "pytorch": path(False, backward)}, args.runs, args.warmup,
                       sync)
        rows.append([f"Mamba mixer {label}: kernels vs PyTorch path", f"{result['kernel'] * 1e3:.2f}",
                     f"{result['pytorch'] * 1e3:.2f}", f"kernels {result['pytorch'] / result['kernel']:.2f}x faster"])
    mixer.use_kernels = True
    return rows


def deit_rows(device, args, sync) -> list[list[str]]:
    from transformers import DeiTConfig, DeiTForImageClassification

    from modeling_dart import DartConfig, DartForImageClassification

    small = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64)
    deit_s = dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=12, intermediate_size=1536)
    sizes = small if args.smoke else deit_s
    dart_input, deit_input = (64, 32) if args.smoke else (448, 224)
    torch.manual_seed(0)
    dart_options = dict(backbone="vit", scorer_trunk="mobilenet_v3_large", scorer_head="v1", num_labels=1000, **sizes)
    if args.smoke:
        dart_options.update(image_size=64, patch_size=8, score_grid_size=4, num_tokens=16,
                            scorer_trunk="mobilenet_v3_small")
    dart_config = DartConfig(**dart_options)
    dart = DartForImageClassification(dart_config).eval().to(device)
    deit = DeiTForImageClassification(DeiTConfig(image_size=deit_input, patch_size=16 if not args.smoke else 8,
                                                 num_labels=1000, **sizes)).eval().to(device)
    dart_pixels = torch.randn(args.batch_size, 3, dart_input, dart_input, device=device)
    deit_pixels = torch.randn(args.batch_size, 3, deit_input, deit_input, device=device)
    backend = "aot_eager" if args.smoke else "inductor"  # the smoke run checks the script, not inductor
    rows = []
    with torch.no_grad():
        eager = timed({"dart": lambda: dart(dart_pixels), "deit": lambda: deit(deit_pixels)}, args.runs, args.warmup,
                      sync)
        rows.append(["DART-DeiT-S vs DeiT-S, eager float32", f"{eager['dart'] * 1e3:.2f}", f"{eager['deit'] * 1e3:.2f}",
                     f"DART {eager['dart'] / eager['deit']:.2f}x DeiT's latency"])
        compiled_dart = torch.compile(dart, fullgraph=True, backend=backend)
        compiled_deit = torch.compile(deit, backend=backend)
        start = time.perf_counter()
        compiled_dart(dart_pixels)
        sync()
        dart_compile = time.perf_counter() - start
        start = time.perf_counter()
        compiled_deit(deit_pixels)
        sync()
        deit_compile = time.perf_counter() - start
        comp = timed({"dart": lambda: compiled_dart(dart_pixels), "deit": lambda: compiled_deit(deit_pixels)},
                     args.runs, args.warmup, sync)
        rows.append(["DART-DeiT-S vs DeiT-S, torch.compile float32", f"{comp['dart'] * 1e3:.2f}",
                     f"{comp['deit'] * 1e3:.2f}",
                     f"DART {comp['dart'] / comp['deit']:.2f}x; compile {dart_compile:.0f} s vs {deit_compile:.0f} s; "
                     f"compiled/eager DART {eager['dart'] / comp['dart']:.2f}x faster"])
        dart.to(torch.bfloat16)  # the scorer stays float32 (DartScorer._apply)
        deit.to(torch.bfloat16)
        half = timed({"dart": lambda: dart(dart_pixels.bfloat16()), "deit": lambda: deit(deit_pixels.bfloat16())},
                     args.runs, args.warmup, sync)
        rows.append(["DART-DeiT-S vs DeiT-S, eager bfloat16", f"{half['dart'] * 1e3:.2f}", f"{half['deit'] * 1e3:.2f}",
                     f"DART {half['dart'] / half['deit']:.2f}x; bf16/fp32 DART {eager['dart'] / half['dart']:.2f}x faster"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU, one round: checks the script")
    parser.add_argument("--status", action="append", default=[], metavar="NAME=VALUE",
                        help="a row reported by gpu_check.sh (repeatable)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup, args.batch_size = 1, 0, 2
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_benchmark: no CUDA device; use --smoke to check the script on the CPU.")
        return 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run)"
    rows = [[item.split("=", 1)[0], "-", "-", item.split("=", 1)[1] if "=" in item else ""] for item in args.status]
    rows += mixer_rows(device, args, sync)
    rows += deit_rows(device, args, sync)
    print(f"\n## GPU check: {name}, torch {torch.__version__}, batch {args.batch_size}, median of {args.runs}\n")
    print(markdown_table(["what", "ms (ours)", "ms (peer)", "result"], rows, align=["l", "r", "r", "l"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
