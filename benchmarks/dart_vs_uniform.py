#!/usr/bin/env python
"""DART (learned scorer) vs a uniform patch grid, same backbone, same token budget, same training budget.

Both arms are trained from scratch on the bundled `examples/data/sparse_fashion` data with the quick-start recipe
(`examples/run_image_classification.py --preset quickstart`), for several seeds; the only difference is the config's
`scorer`: `"learned"` (MobileNetV3-Small trunk + head v1, trained end to end) or `"uniform"` (constant scores: the
standard patch grid, no scorer). Prints validation accuracy mean ± std per arm, and the wall time of each run (the
learned scorer costs extra compute; the uniform arm has no scorer at all).

    python benchmarks/dart_vs_uniform.py                       # 2 arms x 3 seeds, the quick-start recipe
    python benchmarks/dart_vs_uniform.py --seeds 0 --num_train_epochs 2 --max_train_samples 200   # a smoke run

Extra arguments after `--` go to `run_image_classification.py` for both arms, e.g. `-- --learning_rate 2e-3`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "examples"))

import run_image_classification as runner

ARMS = {"dart": "learned", "uniform": "uniform"}


def run_arm(arm: str, seed: int, output_root: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    overrides = dict(runner.QUICKSTART_CONFIG, scorer=ARMS[arm])
    if args.num_tokens is not None:
        overrides["num_tokens"] = args.num_tokens
    argv = [
        "--preset", "quickstart",
        "--config_overrides", ",".join(f"{k}={v}" for k, v in overrides.items()),
        "--seed", str(seed),
        "--output_dir", str(output_root / f"{arm}-seed{seed}"),
        "--disable_tqdm", "true",
        "--logging_strategy", "no",
        "--log_level", "warning",
    ]
    if args.num_train_epochs is not None:
        argv += ["--num_train_epochs", str(args.num_train_epochs)]
    if args.max_train_samples is not None:
        argv += ["--max_train_samples", str(args.max_train_samples)]
    start = time.time()
    metrics = runner.main(argv + extra)
    return {"arm": arm, "seed": seed, "accuracy": metrics["eval_accuracy"], "seconds": time.time() - start,
            "train_runtime": metrics.get("train_runtime")}


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--num_tokens", type=int, default=None,
                        help=f"token budget of both arms (preset: {runner.QUICKSTART_CONFIG['num_tokens']})")
    parser.add_argument("--num_train_epochs", type=float, default=None, help="training budget (preset's by default)")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--output_dir", default=None, help="keep the trained folders here (default: a temp dir)")
    parser.add_argument("--results", default=None, help="write the per-run results to this JSON file")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.output_dir) if args.output_dir else Path(tmp)
        for seed in args.seeds:  # interleave the arms so that machine load drifts affect both alike
            for arm in args.arms:
                result = run_arm(arm, seed, root, args, extra)
                results.append(result)
                print(f"[dart_vs_uniform] {arm:<8} seed {seed}: accuracy {result['accuracy']:.3f} "
                      f"({result['seconds']:.0f} s)", flush=True)

    tokens = args.num_tokens or runner.QUICKSTART_CONFIG["num_tokens"]
    print(f"\nDART vs uniform grid on sparse_fashion (300 validation images, 10 classes), {tokens} tokens, "
          f"seeds {args.seeds}")
    print(f"{'arm':<10}{'accuracy (mean ± std)':<26}{'runs':<32}{'seconds/run':>12}")
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        accuracies = [r["accuracy"] for r in rows]
        runs = ", ".join(f"{a:.3f}" for a in accuracies)
        seconds = statistics.mean(r["seconds"] for r in rows)
        print(f"{arm:<10}{summarise(accuracies):<26}{runs:<32}{seconds:>12.0f}")
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
