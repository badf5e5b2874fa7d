#!/usr/bin/env python
"""CPU cost of DART's image reshaper: its share of a DART-RMT-L6 forward, and DART-RMT-L6 against plain RMT-L6.

    python benchmarks/benchmark_reshaper.py [--runs 3] [--batch_size 8] [--warmup 1] [--threads 2]

Random weights, `eval()`, `torch.no_grad()`, the models timed interleaved (see `_common.py`).

1. share: DART-RMT-L6 (`DartReshaperConfig.darmt_l6()`: the original reshaper with its EfficientNet-B0 scorer, 448 in,
   224 warped, then RMT-L6) on a batch at 448, broken down into the reshaper (scorer trunk + head, then the warp given
   the scores) and the backbone on the warped 224 image.
2. against plain RMT-L6: the same backbone fed the input resized to 224 (what the reshaper replaces: a plain resize)
   and fed the full 448 input.

`--small` swaps RMT-L6 for RMT-T3 (quick smoke runs; the figures in benchmarks/README.md are L6).
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

from modeling_dart import DartReshaperConfig, DartReshaperForImageClassification, RmtConfig  # noqa: E402
from modeling_dart.modeling_rmt import RmtForImageClassification  # noqa: E402


def build(preset: str) -> tuple[DartReshaperForImageClassification, RmtForImageClassification]:
    """DART-RMT-`preset` with the released reshaper settings, and the same RMT alone (its own random weights)."""
    backbone = RmtConfig.from_preset(preset, num_labels=1000)
    dart = DartReshaperForImageClassification(DartReshaperConfig.darmt_l6(backbone_config=backbone)).eval()
    plain = RmtForImageClassification(RmtConfig.from_preset(preset, num_labels=1000)).eval()
    return dart, plain


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[1]), runs=3)
    parser.add_argument("--image_size", type=int, default=448, help="DART's input side (default 448, the original's)")
    parser.add_argument("--small", action="store_true", help="RMT-T3 instead of RMT-L6 (smoke runs)")
    args = parser.parse_args(argv)
    setup_torch(args.threads, args.seed)
    waited = wait_for_idle(args.wait_for_idle)
    preset = "t3" if args.small else "l6"
    dart, plain = build(preset)
    size = args.image_size
    warped_size = size // dart.config.downscale_factor
    print_environment(args, {"backbone": f"RMT-{preset.upper()}", "DART input": f"{size}x{size}",
                             "warped / plain-resize input": f"{warped_size}x{warped_size}",
                             "waited for idle (s)": f"{waited:.0f}"})

    pixels = torch.randn(args.batch_size, 3, size, size)
    resized = torch.nn.functional.interpolate(pixels, size=(warped_size, warped_size), mode="bilinear",
                                              align_corners=False, antialias=True)
    reshaper = dart.reshaper
    with torch.no_grad():
        scores = reshaper.compute_scores(pixels, reshaper.score_normalization)
        warped = reshaper(pixels, score_map=scores).warped_pixel_values
        timings = time_interleaved(
            {
                "DART-RMT full forward (448)": lambda: dart(pixel_values=pixels),
                "reshaper (scorer + warp)": lambda: reshaper(pixels),
                "scorer (trunk + head)": lambda: reshaper.compute_scores(pixels, reshaper.score_normalization),
                "warp given the scores": lambda: reshaper(pixels, score_map=scores),
                f"backbone on the warped {warped_size}": lambda: dart.backbone(pixel_values=warped),
                f"plain RMT at {warped_size}": lambda: plain(pixel_values=resized),
                f"plain RMT at {size}": lambda: plain(pixel_values=pixels),
            },
            runs=args.runs,
            warmup=args.warmup,
        )

    full = timings["DART-RMT full forward (448)"]
    rows = [[name, t.median * 1000, t.minimum * 1000, t.median / full.median] for name, t in timings.items()]
    print("## Times (ms per batch) and share of the DART forward (median)\n")
    print(markdown_table(["call", "median ms", "min ms", "/ DART forward"], rows))
    ratios = {
        "reshaper share": timings["reshaper (scorer + warp)"].median / full.median,
        "scorer share": timings["scorer (trunk + head)"].median / full.median,
        "warp share": timings["warp given the scores"].median / full.median,
        f"DART / plain RMT at {warped_size}": full.median / timings[f"plain RMT at {warped_size}"].median,
        f"DART / plain RMT at {size}": full.median / timings[f"plain RMT at {size}"].median,
    }
    min_ratios = {
        f"DART / plain RMT at {warped_size}": full.minimum / timings[f"plain RMT at {warped_size}"].minimum,
        f"DART / plain RMT at {size}": full.minimum / timings[f"plain RMT at {size}"].minimum,
    }
    print("\n## Ratios\n")
    print(markdown_table(["ratio", "median-based", "min-based"],
                         [[name, value, min_ratios.get(name)] for name, value in ratios.items()]))
    print(f"\nload average at the end: {load_average()}")
    return ratios


if __name__ == "__main__":
    main()
