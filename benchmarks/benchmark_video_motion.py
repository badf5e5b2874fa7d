#!/usr/bin/env python
"""CPU cost of DART's two video tokenisers: their share of a DART-VideoMamba-Ti forward, and DART at 392 clip tokens
against plain VideoMamba-Ti at 1568.

    python benchmarks/benchmark_video_motion.py [--runs 3] [--warmup 1] [--threads 2] [--num_tokens 392]

Setting: batch 1 (one clip), 8 frames of 224x224, random weights, float32, `eval()`, `torch.no_grad()`, the PyTorch
Mamba path (`use_mamba_kernels=False`: the package's CPU selective scan), VideoMamba-Ti (width 192, 24 layers). All
calls are timed interleaved in one process (see `_common.py`). Three models share the backbone weights:

- plain VideoMamba-Ti: the per-frame tokeniser with `scorer="uniform"` at 196 tokens per frame, which is the exact
  14x14 patch grid (a stride-16 convolution): 8 x 196 = 1568 tokens plus cls;
- DART, motion tokeniser (`video_tokenizer="motion"` with the original's settings, `MOTION_PARITY_OPTIONS`): one
  budget of `--num_tokens` for the clip, scored by the frame-to-frame differences of MobileNetV3-Small's stride-16
  features;
- DART, per-frame tokeniser: the same total, `--num_tokens / frames` tokens per frame, each frame scored on its own
  (MobileNetV3-Small trunk + head v2, as DART-Vim-Ti).

For each DART model the tokeniser alone (`embed_frames`: scorer, partition, sampling, projection, positions) and the
Mamba stack alone (on a sequence of the same length) are timed beside the full forward; the tokeniser's share is
tokeniser / full forward. The motion tokeniser's scorer alone is timed as well.

`--small` cuts the backbone to 2 layers and the clip to 4 frames at 64x64 (smoke runs; the figures in
benchmarks/README.md are the default VideoMamba-Ti setting).
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

from modeling_dart import DartVideoConfig, DartVideoMambaForVideoClassification  # noqa: E402
from modeling_dart.configuration_dart import MOTION_PARITY_OPTIONS  # noqa: E402

PLAIN = "plain VideoMamba, full grid"
MOTION = "DART motion tokeniser"
PER_FRAME = "DART per-frame tokeniser"


def build(args, **overrides) -> DartVideoMambaForVideoClassification:
    options = {
        "backbone": "videomamba", "image_size": args.image_size, "patch_size": 16,
        "score_grid_size": args.image_size // 16, "hidden_size": 192, "num_hidden_layers": args.layers,
        "num_frames": args.frames, "num_labels": 400, "use_mamba_kernels": False,
        "scorer_trunk": "mobilenet_v3_small", "scorer_head": "v2",
    }
    options.update(overrides)
    return DartVideoMambaForVideoClassification(DartVideoConfig(**options)).eval()


def build_models(args) -> dict[str, tuple[DartVideoMambaForVideoClassification, int]]:
    """name: (model, the `num_tokens` it is called with); the DART models take the plain model's backbone weights."""
    grid = (args.image_size // 16) ** 2
    plain = build(args, scorer="uniform")
    motion = build(args, **{**MOTION_PARITY_OPTIONS, "image_size": args.image_size,
                            "score_grid_size": args.image_size // 16})
    per_frame = build(args)
    backbone = {k: v for k, v in plain.state_dict().items() if not k.startswith("dart.embeddings.")}
    for model in (motion, per_frame):
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith("dart.embeddings.") for k in missing):
            raise RuntimeError(f"the backbones differ: missing {missing}, unexpected {unexpected}")
    return {
        PLAIN: (plain, grid),
        MOTION: (motion, args.num_tokens),
        PER_FRAME: (per_frame, args.num_tokens // args.frames),
    }


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[1]), runs=3)
    parser.set_defaults(batch_size=1)
    parser.add_argument("--num_tokens", type=int, default=None,
                        help="DART's budget for the whole clip (default 392, or 32 with --small); a multiple of the "
                             "frame count, so that the per-frame tokeniser gets the same total")
    parser.add_argument("--small", action="store_true",
                        help="2 layers, 4 frames of 64x64, 32 clip tokens (smoke runs)")
    args = parser.parse_args(argv)
    args.layers, args.frames, args.image_size = (2, 4, 64) if args.small else (24, 8, 224)
    grid = (args.image_size // 16) ** 2
    if args.num_tokens is None:
        args.num_tokens = 32 if args.small else 392
    if not 0 < args.num_tokens <= args.frames * grid or args.num_tokens % args.frames:
        parser.error(f"--num_tokens must be a multiple of the {args.frames} frames between {args.frames} and "
                     f"{args.frames * grid}, got {args.num_tokens}")
    setup_torch(args.threads, args.seed)
    waited = wait_for_idle(args.wait_for_idle)
    models = build_models(args)
    print_environment(args, {
        "model": f"VideoMamba backbone (width 192, {args.layers} layers), {args.frames} frames of "
                 f"{args.image_size}x{args.image_size}, PyTorch Mamba path (CPU selective scan)",
        "plain": f"{args.frames} x {grid} = {args.frames * grid} tokens (uniform scorer, exact patch grid)",
        "DART motion": f"{args.num_tokens} clip tokens, MobileNetV3-Small cut at stride 16 (original settings)",
        "DART per-frame": f"{args.num_tokens // args.frames} tokens x {args.frames} frames, "
                          "MobileNetV3-Small + head v2",
        "waited for idle (s)": f"{waited:.0f}",
    })

    pixels = torch.randn(args.batch_size, args.frames, 3, args.image_size, args.image_size,
                         generator=torch.Generator().manual_seed(args.seed))
    motion, motion_tokens = models[MOTION]
    per_frame, per_frame_tokens = models[PER_FRAME]
    plain, plain_tokens = models[PLAIN]
    motion_embeddings = motion.dart.embeddings
    with torch.no_grad():
        sequences = {name: model.dart.embed_frames(pixels, num_tokens=n)[0] for name, (model, n) in models.items()}
        grid_side = args.image_size // 16
        calls = {
            f"{PLAIN}: forward": lambda: plain(pixels, num_tokens=plain_tokens),
            f"{MOTION}: forward": lambda: motion(pixels, num_tokens=motion_tokens),
            f"{PER_FRAME}: forward": lambda: per_frame(pixels, num_tokens=per_frame_tokens),
            f"{PLAIN}: tokeniser": lambda: plain.dart.embed_frames(pixels, num_tokens=plain_tokens),
            f"{MOTION}: tokeniser": lambda: motion.dart.embed_frames(pixels, num_tokens=motion_tokens),
            f"{MOTION}: scorer alone": lambda: motion_embeddings.compute_scores(pixels, (grid_side, grid_side)),
            f"{PER_FRAME}: tokeniser": lambda: per_frame.dart.embed_frames(pixels, num_tokens=per_frame_tokens),
            f"{PLAIN}: Mamba stack": lambda: plain.dart.encoder(sequences[PLAIN]),
            f"{MOTION}: Mamba stack": lambda: motion.dart.encoder(sequences[MOTION]),
            f"{PER_FRAME}: Mamba stack": lambda: per_frame.dart.encoder(sequences[PER_FRAME]),
        }
        timings = time_interleaved(calls, runs=args.runs, warmup=args.warmup)

    lengths = {name: sequence.shape[1] for name, sequence in sequences.items()}
    plain_full = timings[f"{PLAIN}: forward"]
    rows = []
    for name, timing in timings.items():
        model_name = name.split(":")[0]
        full = timings[f"{model_name}: forward"]
        rows.append([name, lengths[model_name], timing.median * 1e3, timing.minimum * 1e3,
                     timing.median / full.median, timing.median / plain_full.median])
    print("## Times (ms per clip) and shares\n")
    print(markdown_table(["call", "sequence", "median ms", "min ms", "/ its forward (median)",
                          "/ plain forward (median)"], rows))

    ratios, min_ratios = {}, {}
    for name in (MOTION, PER_FRAME, PLAIN):
        full = timings[f"{name}: forward"]
        ratios[f"{name}: tokeniser share"] = timings[f"{name}: tokeniser"].median / full.median
        min_ratios[f"{name}: tokeniser share"] = timings[f"{name}: tokeniser"].minimum / full.minimum
    ratios[f"{MOTION}: scorer share"] = timings[f"{MOTION}: scorer alone"].median / timings[f"{MOTION}: forward"].median
    min_ratios[f"{MOTION}: scorer share"] = (timings[f"{MOTION}: scorer alone"].minimum
                                             / timings[f"{MOTION}: forward"].minimum)
    for name in (MOTION, PER_FRAME):
        key = f"{name} at {args.num_tokens} / plain at {args.frames * grid}"
        ratios[key] = timings[f"{name}: forward"].median / plain_full.median
        min_ratios[key] = timings[f"{name}: forward"].minimum / plain_full.minimum
    print("\n## Ratios\n")
    print(markdown_table(["ratio", "median-based", "min-based"],
                         [[name, value, min_ratios[name]] for name, value in ratios.items()]))
    print("\nspread (max-min)/median of the forwards: "
          + ", ".join(f"{name}: {timings[f'{name}: forward'].spread:.2f}" for name in models))
    print(f"\nload average at the end: {load_average()}")
    return ratios


if __name__ == "__main__":
    main()
