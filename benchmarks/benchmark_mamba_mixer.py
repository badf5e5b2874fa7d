"""CPU benchmark: a stack of `DartMambaBlock`s (bidirectional, PyTorch path) against Transformers' `MambaModel`
(unidirectional, its CPU fallback path) at Vim-Ti size, in one process.

Setting: CPU, `torch.set_num_threads(2)`, batch 8, sequence 197, width 192, 24 layers, state 16, expand 2, conv 4,
random weights, float32, both models in train mode (no dropout in either), fed with embeddings (`inputs_embeds`).
Ours does the work of two scans per layer (both directions); MambaModel does one.

Measured, alternating the two models so that machine noise hits both alike:

- forward latency: median wall time of `--runs` forward passes under `torch.no_grad()` (after one warm-up each);
- forward+backward latency: median wall time of forward + `loss.backward()` with `loss = output.square().mean()`
  (gradients of all parameters and of the input); `--backward-runs` runs for ours, `--reference-backward-runs` for
  MambaModel, whose backward takes minutes at full size (default 1 run);
- peak memory: around every timed step, free heap memory is returned to the OS (`malloc_trim`), the kernel's peak-RSS
  counter is reset (`/proc/self/clear_refs`), and the step's cost is `VmHWM after - VmRSS before`: the extra resident
  memory the step needed at its peak (activations, tensors saved for backward, gradients, allocator slack), without
  the weights and inputs that exist before it. The table gives the maximum over the runs. Linux / glibc only.

Targets (ours vs MambaModel): forward >= 3x faster, forward+backward >= 20x faster, peak memory no higher.

The machine should be otherwise idle: with 2 threads every parallel operation waits for both threads, so other
processes on the same cores slow both models down by large and unequal factors (the load average is printed).

Usage:
    python benchmarks/benchmark_mamba_mixer.py            # full size (24 layers): about 5-10 minutes on 2 idle cores
    python benchmarks/benchmark_mamba_mixer.py --quick    # 4 layers, 1 run each: about 1 minute
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import pathlib
import platform
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from modeling_dart.mamba_dart import DartMambaAddNorm, DartMambaBlock  # noqa: E402

BATCH, LENGTH, WIDTH, STATE = 8, 197, 192, 16


class DartMambaStack(nn.Module):
    """Embeddings -> `num_layers` Vim blocks -> final add + RMSNorm, as in the Vim backbone."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                DartMambaBlock(WIDTH, state_size=STATE, divide_out=True, use_kernels=False, layer_idx=i)
                for i in range(num_layers)
            ]
        )
        self.norm_f = DartMambaAddNorm(WIDTH)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = inputs_embeds, None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        return self.norm_f(hidden_states, residual)[0]


class TransformersMamba(nn.Module):
    """`transformers.MambaModel` fed with `inputs_embeds` (no kernels on CPU: its sequential fallback scan)."""

    def __init__(self, num_layers: int):
        super().__init__()
        from transformers import MambaConfig, MambaModel

        config = MambaConfig(
            vocab_size=16,
            hidden_size=WIDTH,
            num_hidden_layers=num_layers,
            state_size=STATE,
            expand=2,
            conv_kernel=4,
            use_mambapy=False,
            residual_in_fp32=True,
        )
        self.model = MambaModel(config)

    def forward(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.model(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state


MODELS = {"ours": DartMambaStack, "MambaModel": TransformersMamba}


def forward_step(model: nn.Module, inputs: torch.Tensor) -> None:
    with torch.no_grad():
        model(inputs)


def forward_backward_step(model: nn.Module, inputs: torch.Tensor) -> None:
    x = inputs.clone().requires_grad_(True)
    model(x).square().mean().backward()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def measured_step(step, model: nn.Module, inputs: torch.Tensor) -> tuple[float, float]:
    """Runs `step` once; returns (wall seconds, peak extra resident MiB)."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    rss_before = _status_kib("VmRSS")
    start = time.perf_counter()
    step(model, inputs)
    elapsed = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return elapsed, max(peak - rss_before, 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, 1 run of everything (about 1 minute)")
    parser.add_argument("--layers", type=int, default=None, help="number of layers (default 24, or 4 with --quick)")
    parser.add_argument("--runs", type=int, default=None, help="forward runs per model (default 5, 1 with --quick)")
    parser.add_argument("--backward-runs", type=int, default=None, help="forward+backward runs of ours (default 3)")
    parser.add_argument(
        "--reference-backward-runs", type=int, default=1, help="forward+backward runs of MambaModel (default 1)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    num_layers = args.layers or (4 if args.quick else 24)
    runs = args.runs or (1 if args.quick else 5)
    backward_runs = {"ours": args.backward_runs or (1 if args.quick else 3), "MambaModel": args.reference_backward_runs}

    torch.set_num_threads(args.threads)
    import transformers
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # MambaModel warns once per missing kernel
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"batch {BATCH}, sequence {LENGTH}, width {WIDTH}, {num_layers} layers, state {STATE}, float32; "
        f"forward runs {runs}, forward+backward runs {backward_runs}",
        flush=True,
    )

    models = {}
    for name, cls in MODELS.items():
        torch.manual_seed(0)
        models[name] = cls(num_layers).train()
    inputs = torch.randn(BATCH, LENGTH, WIDTH, generator=torch.Generator().manual_seed(1))

    results = {(name, mode): [] for name in models for mode in ("forward", "forward+backward")}
    for model in models.values():  # warm-up
        forward_step(model, inputs)
    for _ in range(runs):
        for name, model in models.items():
            results[name, "forward"].append(measured_step(forward_step, model, inputs))
    for run in range(max(backward_runs.values())):
        for name, model in models.items():
            if run < backward_runs[name]:
                results[name, "forward+backward"].append(measured_step(forward_backward_step, model, inputs))
                print(f"  {name} forward+backward run {run + 1}: {results[name, 'forward+backward'][-1][0]:.2f} s",
                      flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")

    rows = []
    for mode, speed_target, needed in (("forward", ">= 3x faster", 3.0), ("forward+backward", ">= 20x faster", 20.0)):
        ours = 1e3 * statistics.median(t for t, _ in results["ours", mode])
        reference = 1e3 * statistics.median(t for t, _ in results["MambaModel", mode])
        rows.append((f"{mode} latency, median (ms)", ours, reference, speed_target, needed))
    for mode in ("forward", "forward+backward"):
        ours = max(m for _, m in results["ours", mode])
        reference = max(m for _, m in results["MambaModel", mode])
        rows.append((f"{mode} peak extra RSS (MiB)", ours, reference, "no higher", 1.0))

    print()
    print(
        f"DartMambaBlock x{num_layers} (bidirectional, PyTorch path) vs transformers.MambaModel x{num_layers} "
        f"(unidirectional, CPU fallback); {args.threads} threads"
    )
    print("Targets: forward >= 3x faster, forward+backward >= 20x faster, peak memory no higher.")
    print("Peak extra RSS: VmHWM during the step - VmRSS before it (after malloc_trim), max over runs.")
    header = f"| {'metric':<38} | {'ours':>10} | {'MambaModel':>10} | {'MambaModel / ours':>17} | {'target':<13} | met |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for metric, ours, reference, target, needed in rows:
        ratio = reference / ours if ours > 0 else float("inf")
        met = "yes" if ratio >= needed else "NO"
        print(f"| {metric:<38} | {ours:>10.1f} | {reference:>10.1f} | {ratio:>16.2f}x | {target:<13} | {met:<3} |")


if __name__ == "__main__":
    main()
