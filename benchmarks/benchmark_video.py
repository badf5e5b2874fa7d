#!/usr/bin/env python
"""CPU benchmark: per-clip latency of DART VideoMamba against plain VideoMamba (the same backbone on the standard patch
grid).

Setting: CPU, `torch.set_num_threads(2)`, batch 1 (one clip), 8 frames of 224x224, random weights, float32, the PyTorch
Mamba path (no CUDA kernels), VideoMamba-Ti width 192 with 24 layers (`--layers` to reduce). Every model shares the
same backbone weights (the only difference is the tokenizer), and all are timed interleaved in one process (see
`_common.py`):

- plain VideoMamba: `scorer="uniform"`, 196 tokens per frame = the exact 14x14 patch grid (1 + 8 * 196 = 1569 tokens);
- DART, 196 tokens per frame: learned scorer (MobileNetV3-Small trunk + head v2, as DART-Vim-Ti) on every frame;
- DART, 98 tokens per frame (785 tokens): half the sequence;
- DART, 98 tokens per frame with `video_score_pooling="clip"`: the scorer runs once per clip (on the mean frame).

Besides the end-to-end latency, the tokenizer alone (`embed_frames`: scorer + partition + sampling + projection) is
timed, so the backbone share can be read off.

Usage:
    python benchmarks/benchmark_video.py                  # 24 layers; a few minutes on 2 cores
    python benchmarks/benchmark_video.py --layers 4 --runs 3
"""

from __future__ import annotations

import argparse

from _common import (
    add_common_arguments,
    markdown_table,
    print_environment,
    setup_torch,
    time_interleaved,
    wait_for_idle,
)

import torch  # noqa: E402

from modeling_dart import DartConfig, DartVideoMambaForVideoClassification  # noqa: E402


def build(args, **overrides) -> DartVideoMambaForVideoClassification:
    config = DartConfig(
        backbone="videomamba", image_size=224, patch_size=16, score_grid_size=14, hidden_size=192,
        num_hidden_layers=args.layers, num_frames=args.frames, num_labels=400, use_mamba_kernels=False,
        scorer_trunk="mobilenet_v3_small", scorer_head="v2", **overrides,
    )
    return DartVideoMambaForVideoClassification(config).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs=5)
    parser.set_defaults(batch_size=1)
    parser.add_argument("--layers", type=int, default=24, help="backbone depth (default 24, VideoMamba-Ti)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--flush_denormal", action="store_true",
                        help="torch.set_flush_denormal(True) globally (not needed since the scan flushes subnormal "
                             "decays itself; kept to compare)")
    args = parser.parse_args(argv)
    setup_torch(args.threads, args.seed)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    waited = wait_for_idle(args.wait_for_idle)

    dart = build(args)
    dart_clip = build(args, video_score_pooling="clip")
    plain = build(args, scorer="uniform")
    shared = {k: v for k, v in dart.state_dict().items() if ".scorer." not in k}
    plain.load_state_dict(shared)
    dart_clip.load_state_dict(dart.state_dict())
    pixels = torch.randn(args.batch_size, args.frames, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))

    variants = {  # name: (model, tokens per frame)
        "plain VideoMamba (uniform grid)": (plain, 196),
        "DART, 196 tokens/frame": (dart, 196),
        "DART, 98 tokens/frame": (dart, 98),
        "DART, 98 tokens/frame, clip scoring": (dart_clip, 98),
    }
    print_environment(args, {
        "model": f"VideoMamba-Ti backbone (width 192, {args.layers} layers), {args.frames} frames of 224x224, "
                 "PyTorch Mamba path",
        "DART scorer": "MobileNetV3-Small trunk + head v2 (DART-Vim-Ti), 224x224 input",
        "flush denormals": args.flush_denormal,
        "waited for idle (s)": round(waited, 1),
    })

    with torch.no_grad():
        end_to_end = time_interleaved(
            {name: (lambda m=model, n=tokens: m(pixels, num_tokens=n)) for name, (model, tokens) in variants.items()},
            runs=args.runs, warmup=args.warmup,
        )
        tokenizer = time_interleaved(
            {name: (lambda m=model, n=tokens: m.dart.embed_frames(pixels, num_tokens=n))
             for name, (model, tokens) in variants.items()},
            runs=args.runs, warmup=args.warmup,
        )

    baseline = end_to_end["plain VideoMamba (uniform grid)"]
    rows = []
    for name, (_, tokens) in variants.items():
        timing, tok = end_to_end[name], tokenizer[name]
        rows.append([
            name, tokens, 1 + args.frames * tokens, timing.median * 1e3, timing.minimum * 1e3, tok.median * 1e3,
            timing.median / baseline.median, timing.minimum / baseline.minimum,
        ])
    print("## Per-clip latency (batch 1)\n")
    print(markdown_table(
        ["variant", "tokens/frame", "sequence", "median ms", "min ms", "tokenizer ms (median)", "x plain (median)",
         "x plain (min)"],
        rows,
    ))
    print("\nspread (max-min)/median of the end-to-end rounds: "
          + ", ".join(f"{name}: {t.spread:.2f}" for name, t in end_to_end.items()))


if __name__ == "__main__":
    main()
