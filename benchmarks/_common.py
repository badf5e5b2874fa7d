"""Shared helpers of the benchmark scripts: environment banner, interleaved timing, markdown tables.

These scripts print tables; they are not tests. Every timing follows the same protocol: random weights, `eval()`,
`torch.no_grad()`, warm-up calls, then several timed rounds. Competing models are timed *interleaved* (one call of each
per round, A B A B ...), so that a load change on a shared machine hits both sides alike; the reported figure is the
median over rounds (the minimum is printed as well, since on a busy machine it is the least disturbed estimate).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "conversion"):
    if str(_path) not in sys.path:  # running from a clone without installing
        sys.path.insert(0, str(_path))

import torch  # noqa: E402


# --------------------------------------------------------------------------------------------------- environment
def add_common_arguments(parser: argparse.ArgumentParser, runs: int, warmup: int = 1) -> argparse.ArgumentParser:
    parser.add_argument("--runs", type=int, default=runs, help=f"timed rounds per measurement (default {runs})")
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward call (default 8)")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls before timing (default {warmup})")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default 0)")
    parser.add_argument("--wait_for_idle", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared machine, wait up to SECONDS for the load average to drop before timing")
    return parser


def wait_for_idle(max_wait: float, threshold: float | None = None, poll: float = 10.0) -> float:
    """Wait (at most `max_wait` seconds) until the 1-minute load average drops below `threshold` (default: half the
    logical CPUs). Returns the seconds waited. Useful on a machine shared with other jobs."""
    if max_wait <= 0:
        return 0.0
    threshold = (os.cpu_count() or 1) / 2 if threshold is None else threshold
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        try:
            if os.getloadavg()[0] < threshold:
                break
        except OSError:
            break
        time.sleep(poll)
    return time.perf_counter() - start


def setup_torch(threads: int, seed: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"
    except OSError:
        return "n/a"


def print_environment(args: argparse.Namespace, extra: dict[str, object] | None = None, timing: bool = True) -> None:
    """Print the exact settings of this run (command line, versions, threads, machine load)."""
    import transformers

    lines = {
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_name(),
        "logical cpus": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "batch size": args.batch_size,
        "timed rounds (--runs)": args.runs,
        "warm-up calls": args.warmup,
        "seed": args.seed,
        "load average (1/5/15 min) at start": load_average(),
    }
    if extra:
        lines.update(extra)
    print("## Settings\n")
    for key, value in lines.items():
        print(f"- {key}: {value}")
    print()
    busy = _busy_warning() if timing else None
    if busy:
        print(busy + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _busy_warning() -> str | None:
    try:
        one = os.getloadavg()[0]
    except OSError:
        return None
    cpus = os.cpu_count() or 1
    if one > cpus + 0.5:
        return (f"> WARNING: the 1-minute load average ({one:.1f}) exceeds the {cpus} logical CPUs: other processes "
                f"compete for the cores, absolute times are inflated and noisy. Ratios are more robust (the models "
                f"are timed interleaved); compare the median- and min-based ratios.")
    return None


# ------------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    """Wall-clock times (seconds) of one callable over the timed rounds."""

    name: str
    times: list[float]
    cpu_times: list[float] | None = None  # process CPU time (all threads) per call

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_times) if self.cpu_times else None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def minimum(self) -> float:
        return min(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: how noisy the rounds were."""
        return (max(self.times) - min(self.times)) / self.median


def time_interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, Timing]:
    """Time several callables in alternation: `warmup` untimed calls of each, then `runs` rounds of one call each.

    Call under `torch.no_grad()` (or `inference_mode`) yourself when timing models.
    """
    if runs < 1:
        raise ValueError("--runs must be at least 1")
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    cpu_times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            cpu_start = time.process_time()
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    return {name: Timing(name, times[name], cpu_times[name]) for name in calls}


class Stopwatch:
    """Context manager measuring the wall time of a block: `with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


# ------------------------------------------------------------------------------------------------------ tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: Sequence[str] | None = None) -> str:
    """A GitHub markdown table; `align` is a sequence of "l" / "r" per column (default: first left, others right)."""
    cells = [[_format(value) for value in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    align = align or ["l"] + ["r"] * (len(headers) - 1)

    def line(values):
        return "| " + " | ".join(
            value.ljust(width) if a == "l" else value.rjust(width) for value, width, a in zip(values, widths, align)
        ) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(headers), rule] + [line(row) for row in cells])


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:,.2f}"
    return str(value)


def count_parameters(model: torch.nn.Module) -> tuple[int, int, int]:
    """(total, trainable, frozen) parameter counts (buffers excluded)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable, total - trainable
