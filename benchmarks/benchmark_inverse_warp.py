#!/usr/bin/env python
"""CPU cost of the inverse warp (`unwarp`: logits back to the input grid) against a UperNet decode head's.

    python benchmarks/benchmark_inverse_warp.py [--runs 3] [--batch_size 2] [--warmup 1] [--threads 2] [--small]

What `DartReshaperForSemanticSegmentation` adds after the segmentation model at inference, at ADE20K's setting:
512x512 inputs, 150 classes. Random weights and inputs, `eval()`, `torch.no_grad()`, float32, every call timed
interleaved with the others in one process (see `_common.py`), so that the ratios hold on a loaded machine.

- decode head: Transformers' `UperNetHead` as in UperNet-Swin-T (hidden size 512, pool scales 1, 2, 3, 6, input
  widths 96 / 192 / 384 / 768 at strides 4 / 8 / 16 / 32 of the 512 input), on random features; and the bilinear
  upsampling of its 1/4-size logits to 512 that `UperNetForSemanticSegmentation` applies after it. The backbone and
  the auxiliary head (training only) are not counted: the ratio is against the head alone.
- inverse warp: `unwarp` of the 150-class logits with a non-uniform warp (random row heights and column widths), from
  the 512x512 logits that UperNet returns, and from the head's 128x128 logits directly (`unwarp` reads maps of any
  size; that path replaces the upsampling).

`--small` shrinks everything (64x64 input, hidden size 32, 8 classes) for smoke runs; the figures in
benchmarks/README.md are the full setting.
"""

from __future__ import annotations

import argparse

from _common import (
    add_common_arguments,
    load_average,
    markdown_table,
    print_environment,
    setup_torch,
    time_interleaved,
    wait_for_idle,
)

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from modeling_dart.reshaper_dart import unwarp  # noqa: E402

SWIN_T_WIDTHS = [96, 192, 384, 768]  # UperNet-Swin-T's backbone widths at strides 4, 8, 16, 32
PATCH_SIZE = 16


def random_edges(batch: int, parts: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """Edges `(batch, parts + 1)` from 0 to `total` of parts whose sizes vary by up to 3x (a non-uniform warp)."""
    sizes = torch.rand(batch, parts, generator=generator, dtype=torch.float64) * 2 + 1
    sizes = sizes / sizes.sum(dim=-1, keepdim=True) * total
    return torch.cat([torch.zeros(batch, 1, dtype=torch.float64), sizes.cumsum(dim=-1)], dim=1)


def build_head(hidden_size: int, num_labels: int, widths: list[int]):
    from transformers import UperNetConfig
    from transformers.models.upernet.modeling_upernet import UperNetHead

    config = UperNetConfig(hidden_size=hidden_size, pool_scales=[1, 2, 3, 6], num_labels=num_labels,
                           use_auxiliary_head=False)
    return UperNetHead(config, in_channels=widths).eval()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[1]), runs=3)
    parser.set_defaults(batch_size=2)
    parser.add_argument("--image_size", type=int, default=512, help="input side (default 512, ADE20K's crop)")
    parser.add_argument("--num_labels", type=int, default=150, help="classes (default 150, ADE20K's)")
    parser.add_argument("--small", action="store_true", help="64x64, hidden size 32, 8 classes (smoke runs)")
    args = parser.parse_args(argv)
    if args.small:
        args.image_size, args.num_labels = 64, 8
    if args.image_size % 32 or args.image_size < 32:
        parser.error(f"--image_size must be a positive multiple of 32, got {args.image_size}")
    if args.num_labels < 1 or args.batch_size < 1:
        parser.error("--num_labels and --batch_size must be at least 1")
    setup_torch(args.threads, args.seed)
    waited = wait_for_idle(args.wait_for_idle)
    size, batch, labels = args.image_size, args.batch_size, args.num_labels
    hidden = 32 if args.small else 512
    widths = [8, 16, 32, 64] if args.small else SWIN_T_WIDTHS
    print_environment(args, {"input": f"{size}x{size}", "classes": labels,
                             "decode head": f"UperNetHead, hidden {hidden}, input widths {widths}",
                             "waited for idle (s)": f"{waited:.0f}"})

    generator = torch.Generator().manual_seed(args.seed)
    head = build_head(hidden, labels, widths)
    features = [torch.randn(batch, width, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=generator)
                for i, width in enumerate(widths)]
    cells = size // PATCH_SIZE
    rows, cols = random_edges(batch, cells, size, generator), random_edges(batch, cells, size, generator)
    with torch.no_grad():
        quarter = head(features)
        full = F.interpolate(quarter, size=(size, size), mode="bilinear", align_corners=False)
        assert quarter.shape == (batch, labels, size // 4, size // 4) and full.shape == (batch, labels, size, size)
        timings = time_interleaved(
            {
                "decode head (1/4-size logits)": lambda: head(features),
                "upsampling of its logits to the input": lambda: F.interpolate(
                    quarter, size=(size, size), mode="bilinear", align_corners=False),
                f"inverse warp from {size}x{size} logits": lambda: unwarp(full, rows, cols, PATCH_SIZE, size, size),
                f"inverse warp from {size // 4}x{size // 4} logits": lambda: unwarp(
                    quarter, rows, cols, PATCH_SIZE, size, size),
            },
            runs=args.runs,
            warmup=args.warmup,
        )
    head_time = timings["decode head (1/4-size logits)"]
    rows_out = [[name, t.median * 1000 / batch, t.minimum * 1000 / batch, t.median / head_time.median]
                for name, t in timings.items()]
    print("## Times (ms per image) and ratio to the decode head (median)\n")
    print(markdown_table(["call", "median ms / image", "min ms / image", "/ decode head"], rows_out))
    names = {f"inverse warp from {size} / decode head": f"inverse warp from {size}x{size} logits",
             f"inverse warp from {size // 4} / decode head": f"inverse warp from {size // 4}x{size // 4} logits",
             "upsampling / decode head": "upsampling of its logits to the input"}
    ratios = {ratio: timings[name].median / head_time.median for ratio, name in names.items()}
    min_ratios = {ratio: timings[name].minimum / head_time.minimum for ratio, name in names.items()}
    print("\n## Ratios\n")
    print(markdown_table(["ratio", "median-based", "min-based"],
                         [[name, value, min_ratios[name]] for name, value in ratios.items()]))
    print(f"\nload average at the end: {load_average()}")
    return ratios


if __name__ == "__main__":
    main()
