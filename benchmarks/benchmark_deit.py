#!/usr/bin/env python
"""CPU latency / throughput of DART-DeiT against Transformers' DeiT, measured in the same process.

    python benchmarks/benchmark_deit.py [--runs 5] [--batch_size 8] [--warmup 1] [--threads 2] [--profile] [--what_if]

Comparisons (random weights, eval mode, no_grad, SDPA attention on both sides):

1. latency: DART-DeiT-Ti / -S (196 tokens, 448x448 input, 12 layers) vs `DeiTForImageClassification` of the same
   width and depth at 224x224 (196 patches).                                          target: ratio <= 1.15x
2. throughput: DART-DeiT-S with 392 tokens at 448 vs DeiT-S at 384x384 (576 patches).  target: ratio >= 1.4x
3. share of the DART embeddings (`model.dart.embeddings(...)`: scorer, partition, sampling, projection) in the
   forward time of DART-DeiT-S at 196 tokens.                                         target: < 25%
   with a breakdown: scorer trunk / scorer head / partition + sampling + projection (and inside it the two
   bilinear sampling stages, `sample_regions`, and the projection conv) / backbone alone.

Note: Transformers' DeiT always carries a distillation token, so its sequence is 198 long (cls + distillation + 196
patches) against 197 for DART (cls + 196 tokens); the difference (0.5% more tokens on the peer's side) is ignored.

`--profile` adds a torch.profiler table of the top operators of DART-DeiT-S's embeddings and forward.
`--what_if` also times DART-DeiT-S with its scorer fed a 224 copy of the input (applied to a copy of the model inside
this script; `modeling_dart/` is unchanged), to quantify a possible opt-in speed knob that changes the scores.
"""

from __future__ import annotations

import argparse
import copy
import time

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

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import DeiTConfig, DeiTForImageClassification  # noqa: E402

import modeling_dart.embeddings_dart as embeddings_module  # noqa: E402
from modeling_dart import DartConfig, DartForImageClassification  # noqa: E402

LATENCY_TARGET = 1.15
THROUGHPUT_TARGET = 1.4
SHARE_TARGET = 0.25

SIZES = {
    "Ti": dict(hidden_size=192, num_attention_heads=3, scorer_trunk="mobilenet_v3_small"),
    "S": dict(hidden_size=384, num_attention_heads=6, scorer_trunk="mobilenet_v3_large"),
}


def build_dart(size: str, num_tokens: int) -> DartForImageClassification:
    spec = SIZES[size]
    config = DartConfig(
        backbone="vit",
        hidden_size=spec["hidden_size"],
        num_attention_heads=spec["num_attention_heads"],
        num_hidden_layers=12,
        scorer_trunk=spec["scorer_trunk"],
        scorer_head="v1",
        num_tokens=num_tokens,
        num_labels=1000,
    )
    return DartForImageClassification(config).eval()


def build_deit(size: str, image_size: int) -> DeiTForImageClassification:
    spec = SIZES[size]
    config = DeiTConfig(
        hidden_size=spec["hidden_size"],
        num_attention_heads=spec["num_attention_heads"],
        num_hidden_layers=12,
        intermediate_size=4 * spec["hidden_size"],
        image_size=image_size,
        patch_size=16,
        num_labels=1000,
    )
    return DeiTForImageClassification(config).eval()


def attn_implementation(model: nn.Module) -> str:
    return getattr(model.config, "_attn_implementation", None) or "?"


# ------------------------------------------------------------------------------------------ stage breakdown
class EmbeddingStageTimer:
    """Times the two bilinear sampling stages (`sample_regions`) and the projection conv inside `DartEmbeddings.forward`.

    Patches `modeling_dart.embeddings_dart.sample_regions` (looked up at call time by the forward) and hooks the
    projection module, for the lifetime of the context only.
    """

    def __init__(self, embeddings: nn.Module):
        self.embeddings = embeddings
        self.sampling: list[float] = []
        self.projection: list[float] = []

    def __enter__(self):
        original = embeddings_module.sample_regions
        self._original = original

        def timed_sample_regions(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.sampling.append(time.perf_counter() - start)
            return out

        embeddings_module.sample_regions = timed_sample_regions
        self._start = None

        def pre(module, inputs):
            self._start = time.perf_counter()

        def post(module, inputs, output):
            self.projection.append(time.perf_counter() - self._start)

        self._hooks = [
            self.embeddings.projection.register_forward_pre_hook(pre),
            self.embeddings.projection.register_forward_hook(post),
        ]
        return self

    def __exit__(self, *exc):
        embeddings_module.sample_regions = self._original
        for hook in self._hooks:
            hook.remove()
        return False


def breakdown(model: DartForImageClassification, pixel_values: torch.Tensor, runs: int, warmup: int):
    """Interleaved timing of the full forward, the embeddings and their stages, and the backbone alone."""
    embeddings = model.dart.embeddings
    scorer = embeddings.scorer
    normalization = model.config.score_normalization
    features = scorer.extract_features(pixel_values)
    score_map = scorer(pixel_values, normalization, features=features)
    sequence = embeddings(pixel_values).embeddings

    def backbone():
        hidden = model.dart.encoder(sequence).last_hidden_state
        return model.classifier(hidden[:, 0])

    with EmbeddingStageTimer(embeddings) as stages:
        timings = time_interleaved(
            {
                "full forward": lambda: model(pixel_values),
                "embeddings (all)": lambda: embeddings(pixel_values),
                "scorer trunk (MobileNetV3, frozen)": lambda: scorer.extract_features(pixel_values),
                "scorer head (MLP, resize, standardise)": lambda: scorer(pixel_values, normalization, features=features),
                "partition + sampling + projection": lambda: embeddings(pixel_values, score_map=score_map),
                "backbone (12 blocks + norm + classifier)": backbone,
            },
            runs=runs,
            warmup=warmup,
        )
    # each of "full forward", "embeddings (all)", "partition + ..." calls sample_regions / projection once per call;
    # keep the calls made by the "partition + sampling + projection" entry: the third call of every round
    per_round = 3
    sampling = stages.sampling[warmup * per_round:][2::per_round]
    projection = stages.projection[warmup * per_round:][2::per_round]
    return timings, sampling, projection


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


# ------------------------------------------------------------------------------------------------- what-if
class DownscaledTrunk(nn.Module):
    """The scorer's trunk fed a bilinear (antialiased) copy of the input scaled by `input_scale`.

    At 0.5 the trunk sees 224 pixels, as the scorer does in the paper's `high_res=False` setting: its map is then 7x7
    and the scorer resizes it to the 14x14 grid. That changes the scores (not a drop-in for the released 448-scorer
    checkpoints); it is timed as a possible opt-in speed knob.
    """

    def __init__(self, features: nn.Sequential, input_scale: float):
        super().__init__()
        self.features = copy.deepcopy(features).eval()
        self.input_scale = input_scale
        self.training = False

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = nn.functional.interpolate(pixel_values, scale_factor=self.input_scale, mode="bilinear",
                                                 align_corners=False, antialias=True)
        return self.features(pixel_values.contiguous(memory_format=torch.channels_last))


WHAT_IF_VARIANTS = {
    "current (fused oneDNN trunk, chunked)": None,
    "scorer on a 224 copy (changes scores)": 0.5,
}


def what_if(model: DartForImageClassification, pixel_values: torch.Tensor, runs: int, warmup: int,
            peer: nn.Module, peer_pixels: torch.Tensor):
    """Time DART-DeiT-S with modified copies of its scorer trunk, interleaved with the peer."""
    variants, errors = {}, {}
    ref_logits = model(pixel_values).logits
    for name, scale in WHAT_IF_VARIANTS.items():
        if scale is None:
            variants[name] = model
            continue
        fast = copy.deepcopy(model)
        fast.dart.embeddings.scorer.features = DownscaledTrunk(model.dart.embeddings.scorer.features, scale)
        fast.eval()
        variants[name] = fast
        logits = fast(pixel_values).logits
        errors[name] = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    calls = {"peer": lambda: peer(peer_pixels)}
    for name, variant in variants.items():
        calls[f"{name}|full"] = lambda m=variant: m(pixel_values)
        calls[f"{name}|embeddings"] = lambda m=variant: m.dart.embeddings(pixel_values)
        calls[f"{name}|trunk"] = lambda m=variant: m.dart.embeddings.scorer.extract_features(pixel_values)
    return time_interleaved(calls, runs=runs, warmup=warmup), errors


def profile_table(model: DartForImageClassification, pixel_values: torch.Tensor, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    out = []
    for title, call in (
        ("embeddings", lambda: model.dart.embeddings(pixel_values)),
        ("full forward", lambda: model(pixel_values)),
    ):
        call()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        out.append(f"### torch.profiler: DART-DeiT-S {title} (one call)\n")
        out.append("```\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows) + "\n```\n")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs=5, warmup=1)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables for DART-DeiT-S")
    parser.add_argument("--what_if", action="store_true",
                        help="also time DART-DeiT-S with its scorer on a 224 copy of the input (changes the scores)")
    args = parser.parse_args(argv)
    setup_torch(args.threads, args.seed)
    batch = args.batch_size

    wall = Stopwatch().__enter__()
    generator = torch.Generator().manual_seed(args.seed)
    pixels = {size: torch.randn(batch, 3, size, size, generator=generator) for size in (224, 384, 448)}

    models = {
        "DART-DeiT-Ti": build_dart("Ti", 196),
        "DeiT-Ti @224": build_deit("Ti", 224),
        "DART-DeiT-S": build_dart("S", 196),
        "DeiT-S @224": build_deit("S", 224),
        "DART-DeiT-S-392": build_dart("S", 392),
        "DeiT-S @384": build_deit("S", 384),
    }
    attn = {name: attn_implementation(model) for name, model in models.items()}
    waited = wait_for_idle(args.wait_for_idle)
    print_environment(
        args,
        {
            "attention": ", ".join(sorted(set(attn.values()))) + " (Transformers default; both sides)",
            "DART score normalization": models["DART-DeiT-S"].config.score_normalization,
            "inputs": "torch.randn, float32; DART at 448x448, DeiT at 224x224 / 384x384",
            "weights": "random init (post_init), model.eval(), torch.no_grad()",
            "timing": "interleaved rounds (one call of each model per round), median over rounds",
            "waited for idle": f"{waited:.0f} s (--wait_for_idle {args.wait_for_idle:g})",
        },
    )

    results = {}
    with torch.no_grad():
        for dart_name, peer_name, dart_px, peer_px in (
            ("DART-DeiT-Ti", "DeiT-Ti @224", 448, 224),
            ("DART-DeiT-S", "DeiT-S @224", 448, 224),
            ("DART-DeiT-S-392", "DeiT-S @384", 448, 384),
        ):
            with Stopwatch() as sw:
                timings = time_interleaved(
                    {
                        dart_name: lambda m=models[dart_name], x=pixels[dart_px]: m(x),
                        peer_name: lambda m=models[peer_name], x=pixels[peer_px]: m(x),
                    },
                    runs=args.runs,
                    warmup=args.warmup,
                )
            results.update(timings)
            print(f"[timed {dart_name} vs {peer_name} in {sw.seconds:.1f} s; load {load_average()}]")

        with Stopwatch() as sw:
            stage_timings, sampling, projection = breakdown(models["DART-DeiT-S"], pixels[448], args.runs, args.warmup)
        print(f"[timed the DART-DeiT-S breakdown in {sw.seconds:.1f} s; load {load_average()}]\n")

    # -------------------------------------------------------------------------------------- main table
    def row(name, tokens, size, ratio=None, target=None, met=None):
        timing = results[name]
        return [name, tokens, f"{size}x{size}", timing.median * 1e3, batch / timing.median, ratio, target, met]

    def yes(ok):
        return "yes" if ok else "NO"

    lat_ti = results["DART-DeiT-Ti"].median / results["DeiT-Ti @224"].median
    lat_s = results["DART-DeiT-S"].median / results["DeiT-S @224"].median
    thr_392 = results["DeiT-S @384"].median / results["DART-DeiT-S-392"].median
    share = stage_timings["embeddings (all)"].median / stage_timings["full forward"].median
    emb = stage_timings["embeddings (all)"]

    rows = [
        row("DeiT-Ti @224", "196 (+cls, dist)", 224, "peer"),
        row("DART-DeiT-Ti", "196 (+cls)", 448, f"{lat_ti:.2f}x latency", f"<= {LATENCY_TARGET}x", yes(lat_ti <= LATENCY_TARGET)),
        row("DeiT-S @224", "196 (+cls, dist)", 224, "peer"),
        row("DART-DeiT-S", "196 (+cls)", 448, f"{lat_s:.2f}x latency", f"<= {LATENCY_TARGET}x", yes(lat_s <= LATENCY_TARGET)),
        row("DeiT-S @384", "576 (+cls, dist)", 384, "peer"),
        row("DART-DeiT-S-392", "392 (+cls)", 448, f"{thr_392:.2f}x throughput", f">= {THROUGHPUT_TARGET}x",
            yes(thr_392 >= THROUGHPUT_TARGET)),
        ["DART-DeiT-S embeddings only", "196", "448x448", emb.median * 1e3, batch / emb.median,
         f"{share:.1%} of DART-DeiT-S forward", f"< {SHARE_TARGET:.0%}", yes(share < SHARE_TARGET)],
    ]
    print(f"## DART-DeiT vs Transformers DeiT (batch {batch}, {torch.get_num_threads()} threads, SDPA)\n")
    print(markdown_table(
        ["model", "tokens", "input", "latency ms (median)", "images/s", "ratio vs peer", "target", "met?"],
        rows, align=["l", "l", "l", "r", "r", "l", "l", "l"],
    ))

    print("\nRobustness (same rounds): ratios from median wall time, minimum wall time and median process CPU time "
          "(all threads; insensitive to waiting for a core on a busy machine), and the spread (max-min)/median of "
          "each model's wall times.\n")
    pairs = [("DART-DeiT-Ti", "DeiT-Ti @224", "latency"), ("DART-DeiT-S", "DeiT-S @224", "latency"),
             ("DART-DeiT-S-392", "DeiT-S @384", "throughput")]
    robust = []
    for dart_name, peer_name, kind in pairs:
        d, p = results[dart_name], results[peer_name]
        med = d.median / p.median if kind == "latency" else p.median / d.median
        low = d.minimum / p.minimum if kind == "latency" else p.minimum / d.minimum
        cpu = d.cpu_median / p.cpu_median if kind == "latency" else p.cpu_median / d.cpu_median
        robust.append([f"{dart_name} vs {peer_name}", kind, f"{med:.2f}x", f"{low:.2f}x", f"{cpu:.2f}x",
                       f"{d.spread:.0%}", f"{p.spread:.0%}"])
    print(markdown_table(["pair", "ratio", "median wall", "min wall", "median CPU time", "spread DART",
                          "spread peer"], robust))

    # --------------------------------------------------------------------------------------- breakdown
    full = stage_timings["full forward"].median
    sampling_ms = median(sampling) * 1e3 if sampling else None
    projection_ms = median(projection) * 1e3 if projection else None
    rest = stage_timings["partition + sampling + projection"].median * 1e3
    if sampling_ms is not None and projection_ms is not None:
        other_ms = rest - sampling_ms - projection_ms
    else:
        other_ms = None
    full_cpu = stage_timings["full forward"].cpu_median
    brk = []
    for name, timing in stage_timings.items():
        brk.append([name, timing.median * 1e3, timing.median / full, timing.minimum * 1e3,
                    f"{timing.cpu_median / full_cpu:.1%}"])
    brk.insert(5, ["  of which sampling (rows, then patches)", sampling_ms,
                   (sampling_ms or 0) / 1e3 / full, None, None])
    brk.insert(6, ["  of which projection Conv2d(3, D, 16, 16)", projection_ms, (projection_ms or 0) / 1e3 / full,
                   None, None])
    brk.insert(7, ["  of which partition, positions, checks, boxes", other_ms, (other_ms or 0) / 1e3 / full,
                   None, None])
    print(f"\n## Where DART-DeiT-S's forward time goes (196 tokens, 448x448, batch {batch})\n")
    print(markdown_table(["stage (each timed on its own)", "ms (median)", "share of full forward", "ms (min)",
                          "share (CPU time)"],
                         [[n, ms, f"{s:.1%}", mn, c] for n, ms, s, mn, c in brk]))
    print("\nStages are separate calls timed interleaved with the full forward; they need not add up exactly.")

    if args.what_if:
        with torch.no_grad(), Stopwatch() as sw:
            wi, errors = what_if(models["DART-DeiT-S"], pixels[448], args.runs, args.warmup,
                                 models["DeiT-S @224"], pixels[224])
        peer = wi["peer"]
        print(f"\n## What if: faster scorer trunk (DART-DeiT-S, 196 tokens, batch {batch}; timed interleaved with "
              f"DeiT-S @224, {sw.seconds:.1f} s)\n")
        rows = []
        for name in WHAT_IF_VARIANTS:
            full, emb, trunk = (wi[f"{name}|{part}"] for part in ("full", "embeddings", "trunk"))
            rows.append([name, trunk.median * 1e3, emb.median * 1e3, full.median * 1e3, f"{emb.median / full.median:.1%}",
                         f"{full.median / peer.median:.2f}x", f"{full.cpu_median / peer.cpu_median:.2f}x"])
        print(markdown_table(["variant", "trunk ms", "embeddings ms", "full forward ms", "embeddings share",
                              "latency ratio (wall)", "ratio (CPU time)"], rows))
        print(f"\nPeer DeiT-S @224: median {peer.median * 1e3:.0f} ms.")
        for name, logits_error in errors.items():
            print(f"{name}: max relative logits difference to the current model {logits_error:.1e} (other scores, "
                  f"other regions: not the released model's outputs).")

    if args.profile:
        print()
        with torch.no_grad():
            print(profile_table(models["DART-DeiT-S"], pixels[448]))

    wall.__exit__()
    print(f"\nTotal wall time: {wall.seconds:.1f} s; load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
