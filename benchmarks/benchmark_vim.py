#!/usr/bin/env python
"""CPU forward latency of the full DART-Vim-Ti (24 bidirectional Mamba layers, PyTorch scan) next to DART-DeiT-Ti.

    python benchmarks/benchmark_vim.py [--runs 3] [--batch_size 8] [--threads 2] [--num_tokens 196]

Random weights, eval mode, no_grad, 448x448 input, both models timed in alternation in the same process. The Vim
model runs the pure-PyTorch selective scan (mamba-ssm kernels only apply to CUDA tensors). Also reported: the share of
the DART embeddings in the Vim forward.
"""

from __future__ import annotations

import argparse

import torch
from _common import add_common_arguments, markdown_table, print_environment, setup_torch, time_interleaved, wait_for_idle

from modeling_dart import DartConfig, DartForImageClassification


def build(backbone: str, num_tokens: int) -> DartForImageClassification:
    if backbone == "vim":
        config = DartConfig(backbone="vim", hidden_size=192, num_hidden_layers=24, scorer_head="v2",
                            num_tokens=num_tokens, num_labels=1000)
    else:
        config = DartConfig(backbone="vit", hidden_size=192, num_attention_heads=3, num_hidden_layers=12,
                            scorer_head="v1", num_tokens=num_tokens, num_labels=1000)
    return DartForImageClassification(config).eval()


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__), runs=3)
    parser.add_argument("--num_tokens", type=int, default=196)
    args = parser.parse_args()
    setup_torch(args.threads, args.seed)
    wait_for_idle(args.wait_for_idle)
    print_environment(args)
    vim, deit = build("vim", args.num_tokens), build("vit", args.num_tokens)
    pixels = torch.randn(args.batch_size, 3, 448, 448)
    with torch.no_grad():
        timings = time_interleaved(
            {
                "DART-Vim-Ti": lambda: vim(pixels),
                "DART-Vim-Ti embeddings": lambda: vim.dart.embeddings(pixels),
                "DART-DeiT-Ti": lambda: deit(pixels),
            },
            runs=args.runs,
            warmup=args.warmup,
        )
    full = timings["DART-Vim-Ti"].median
    rows = [
        ["DART-Vim-Ti (24 layers)", args.num_tokens, f"{full * 1e3:.0f}", f"{args.batch_size / full:.2f}", "-"],
        ["  of which DART embeddings", args.num_tokens, f"{timings['DART-Vim-Ti embeddings'].median * 1e3:.0f}", "-",
         f"{timings['DART-Vim-Ti embeddings'].median / full:.1%} of forward"],
        ["DART-DeiT-Ti (12 layers)", args.num_tokens, f"{timings['DART-DeiT-Ti'].median * 1e3:.0f}",
         f"{args.batch_size / timings['DART-DeiT-Ti'].median:.2f}", f"Vim / DeiT = {full / timings['DART-DeiT-Ti'].median:.2f}x"],
    ]
    print(markdown_table(["model", "tokens", "latency ms (median)", "images/s", "note"], rows))


if __name__ == "__main__":
    main()
