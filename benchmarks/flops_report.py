#!/usr/bin/env python
"""FLOPs / parameter report of the released DART variants, checked against the original release's numbers.

    python benchmarks/flops_report.py [--variants darvit_tiny darvit_sm ...] [--fixtures DIR] [--runs 0] [--batch_size 8]

For every variant of `conversion/convert_dart_original.py`'s `VARIANTS` table listed in `REPORT` below, at full depth
with random weights, this counts the forward FLOPs of one image with `torch.utils.flop_counter.FlopCounterMode` in two
settings:

- `224`: the paper's setting (the original's `test.py` with `high_res=False`): a 224x224 input. The scorer sees 224,
  its 7x7 map is bilinearly resized to 14x14; the tokens are sampled from the 224 input.
- `448`: the released models' real inference setting (448x448 input, scorer at 448, 14x14 map).

GMACs = FLOPs / 2 (the paper counts a multiply-add as one). FlopCounterMode counts matrix products and convolutions
only (as in the original's numbers); elementwise work, grid_sample and the selective scan's recurrence are not counted.
SDPA attention on CPU runs `aten._scaled_dot_product_flash_attention_for_cpu`, which FlopCounterMode does not know;
this script registers the standard attention formula for it (2*B*H*Lq*Lk*(d_qk + d_v)), which equals what the
eager path's two matmuls count (check with `--attn_implementation eager`).

Compared with `summary_params_flops.json` of the original (fixtures folder: `--fixtures`, else `$DART_FIXTURES_DIR`,
else `../shared/fixtures/original` next to the repository) and with the rounded GMACs quoted in DESIGN.md §2b. Without
the fixtures the script prints our numbers only.

Vim variants (`backbone="vim"`) are in the table too; when the model cannot be built yet they are reported as skipped.
The original's Vim totals include the reference selective-scan and causal-conv1d FLOPs; its
`total_excl_ssm_kernels_flops` leaves them out. We report ours both ways: "SSM kernels" = the convolution and batched
matmul FLOPs counted inside the `*.mixer` modules outside their Linear projections (depthwise conv1d, scan einsums).

`--runs N` (default 0) additionally times N forward passes of each variant at `--batch_size` (default 8) and reports
the median latency; the FLOP counts are always per image at batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from _common import REPO_ROOT, Stopwatch, add_common_arguments, count_parameters, markdown_table, print_environment
from _common import setup_torch, time_interleaved, wait_for_idle

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from convert_dart_original import VARIANTS  # noqa: E402  (the table of released variants; reused, not copied)
from modeling_dart import DartConfig, DartForImageClassification  # noqa: E402

DEFAULT_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "original"
TOLERANCE = 0.01  # relative


@dataclass(frozen=True)
class ReportEntry:
    """One row group of the report: a variant of `VARIANTS`, the settings to count, and what to compare with."""

    variant: str
    settings: tuple[int, ...] = (224, 448)
    # DESIGN.md §2b (paper GFLOPs at 224 / measured GMACs at 448), rounded to 2 decimals
    design_gmacs: dict[int, float] | None = None


# Adding a variant to the report = adding an entry here (the model itself comes from VARIANTS[variant]).
REPORT: list[ReportEntry] = [
    ReportEntry("darvit_tiny", design_gmacs={224: 1.31, 448: 1.45}),
    ReportEntry("darvit_tiny_v2"),
    ReportEntry("darvit_tiny_121p", design_gmacs={224: 0.79, 448: 0.92}),
    ReportEntry("darvit_sm", design_gmacs={224: 4.81, 448: 5.38}),
    ReportEntry("darvit_sm_144p"),
    ReportEntry("darvit_sm_288p"),
    ReportEntry("darvit_sm_392p", design_gmacs={224: 10.12, 448: 10.69}),
    # Vim: the original reports 448 only (flops224 is null); built only once backbone="vim" is wired
    ReportEntry("darvim_tiny", settings=(448,)),
    ReportEntry("darvim_tiny_2seq", settings=(448,)),
    ReportEntry("darvim_sm", settings=(448,)),
    ReportEntry("darvim_sm_2seq", settings=(448,)),
]

ORIGINAL_SETTING_KEY = {448: "flops", 224: "flops224"}


# ---------------------------------------------------------------------------------------------- counting
def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(Q K^T) V for (B, H, Lq, d) queries, (B, H, Lk, d) keys and (B, H, Lk, dv) values."""
    batch, heads, q_len, qk_dim = query_shape
    k_len = key_shape[-2]
    v_dim = value_shape[-1]
    return 2 * batch * heads * q_len * k_len * qk_dim + 2 * batch * heads * q_len * k_len * v_dim


def _custom_mapping() -> dict:
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_cpu_flops
    return mapping


@dataclass
class Count:
    total: int
    scorer: int
    scorer_trunk: int
    projection: int
    embeddings: int
    ssm_kernels: int
    mixer_ops: dict[str, int] | None = None  # FLOPs by aten op inside the Mamba mixers (Vim), summed over layers

    @property
    def scorer_head(self) -> int:
        return self.scorer - self.scorer_trunk

    @property
    def tokenizer_other(self) -> int:
        return self.embeddings - self.scorer - self.projection

    @property
    def backbone_head(self) -> int:
        return self.total - self.embeddings

    @property
    def total_excl_ssm(self) -> int:
        return self.total - self.ssm_kernels


def _module_total(counts: dict, suffix: str) -> int:
    """Sum of all ops of the unique module whose name ends with `suffix` (0 if none)."""
    names = [name for name in counts if name.endswith(suffix)]
    if not names:
        return 0
    name = min(names, key=len)
    return int(sum(counts[name].values()))


def _ssm_kernel_flops(counts: dict, model: torch.nn.Module) -> int:
    """Convolution and batched-matmul FLOPs inside each Mamba mixer, outside its Linear children."""
    total = 0
    prefix = type(model).__name__
    for name, module in model.named_modules():
        if not name.endswith(".mixer"):
            continue
        ops = counts.get(f"{prefix}.{name}", {})
        mixer = sum(v for op, v in ops.items() if _op_name(op) in ("convolution", "bmm", "baddbmm"))
        children = 0
        for child_name, child in module.named_children():
            if isinstance(child, torch.nn.Linear):
                child_ops = counts.get(f"{prefix}.{name}.{child_name}", {})
                children += sum(v for op, v in child_ops.items() if _op_name(op) in ("convolution", "bmm", "baddbmm"))
        total += mixer - children
    return int(total)


def _mixer_ops(counts: dict, model: torch.nn.Module) -> dict[str, int]:
    prefix = type(model).__name__
    ops: dict[str, int] = {}
    for name, _ in model.named_modules():
        if name.endswith(".mixer"):
            for op, value in counts.get(f"{prefix}.{name}", {}).items():
                ops[_op_name(op)] = ops.get(_op_name(op), 0) + int(value)
    return ops


def _op_name(op) -> str:
    return str(op).split(".")[-1].split("default")[0].strip(".")


def count_flops(model: DartForImageClassification, size: int) -> Count:
    pixel_values = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False, depth=None, custom_mapping=_custom_mapping()) as counter:
        model(pixel_values)
    counts = counter.get_flop_counts()
    return Count(
        total=int(counter.get_total_flops()),
        scorer=_module_total(counts, ".dart.embeddings.scorer"),
        scorer_trunk=_module_total(counts, ".dart.embeddings.scorer.features"),
        projection=_module_total(counts, ".dart.embeddings.projection"),
        embeddings=_module_total(counts, ".dart.embeddings"),
        ssm_kernels=_ssm_kernel_flops(counts, model),
        mixer_ops=_mixer_ops(counts, model),
    )


def build_model(variant_name: str, attn_implementation: str | None) -> DartForImageClassification:
    kwargs = VARIANTS[variant_name].config_kwargs()
    config = DartConfig(**kwargs, num_labels=1000)
    if attn_implementation:
        config._attn_implementation = attn_implementation
    return DartForImageClassification(config).eval()


# -------------------------------------------------------------------------------------------- comparison
def load_original(fixtures: Path | None) -> dict | None:
    if fixtures is None:
        return None
    path = fixtures / "summary_params_flops.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def rel(ours: float, reference: float | None) -> float | None:
    if reference is None or reference == 0:
        return None
    return (ours - reference) / reference


def fmt_rel(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2%}"


def within(value: float | None) -> str:
    return "-" if value is None else ("yes" if abs(value) <= TOLERANCE else "NO")


def g(flops: float) -> float:
    """FLOPs -> GMACs."""
    return flops / 2e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, runs=0, warmup=1)
    parser.add_argument("--variants", nargs="+", default=None, choices=[e.variant for e in REPORT],
                        help="subset of the report (default: all entries of REPORT)")
    parser.add_argument("--fixtures", type=Path, default=None,
                        help="folder with summary_params_flops.json (default: $DART_FIXTURES_DIR, else "
                             f"{DEFAULT_FIXTURES})")
    parser.add_argument("--attn_implementation", default=None, choices=["sdpa", "eager"],
                        help="attention implementation to count (default: the model's default, SDPA)")
    args = parser.parse_args(argv)
    setup_torch(args.threads, args.seed)

    fixtures = args.fixtures or (Path(os.environ["DART_FIXTURES_DIR"]) if os.environ.get("DART_FIXTURES_DIR")
                                 else DEFAULT_FIXTURES)
    original = load_original(fixtures)
    entries = [e for e in REPORT if args.variants is None or e.variant in args.variants]
    waited = wait_for_idle(args.wait_for_idle) if args.runs else 0.0
    print_environment(args, {
        "FLOP counting": "FlopCounterMode, batch 1, random weights, eval, no_grad; GMACs = FLOPs / 2",
        "attention counted": args.attn_implementation or "model default (sdpa; CPU flash op mapped to the "
                                                          "attention formula)",
        "fixtures": f"{fixtures} ({'found' if original else 'NOT FOUND: our numbers only'})",
        "latency timing": (f"{args.runs} runs at batch {args.batch_size}" if args.runs else "off (--runs 0)"),
        "waited for idle": f"{waited:.0f} s",
    }, timing=bool(args.runs))

    counts: dict[tuple[str, int], Count] = {}
    params: dict[str, tuple[int, int, int]] = {}
    latency: dict[tuple[str, int], float] = {}
    skipped: dict[str, str] = {}
    for entry in entries:
        variant = VARIANTS[entry.variant]
        with Stopwatch() as sw:
            try:
                model = build_model(entry.variant, args.attn_implementation)
                params[entry.variant] = count_parameters(model)
                for size in entry.settings:
                    counts[(entry.variant, size)] = count_flops(model, size)
            except Exception as error:  # noqa: BLE001 -- e.g. a backbone that is not wired yet
                last = traceback.format_exception_only(type(error), error)[-1].strip()
                skipped[entry.variant] = f"{variant.backbone} backbone: {last[:160]}"
                print(f"[{entry.variant}: skipped ({skipped[entry.variant]})]")
                continue
            if args.runs:
                with torch.no_grad():
                    for size in entry.settings:
                        x = torch.randn(args.batch_size, 3, size, size)
                        t = time_interleaved({"m": lambda: model(x)}, runs=args.runs, warmup=args.warmup)["m"]
                        latency[(entry.variant, size)] = t.median
        print(f"[{entry.variant}: counted {', '.join(map(str, entry.settings))} in {sw.seconds:.1f} s]")
    print()

    # ------------------------------------------------------------------------------------- GMACs table
    headers = ["variant", "input", "tokens", "GMACs (ours)", "scorer GMACs", "scorer share",
               "original GMACs", "vs original", "<= 1%?", "DESIGN §2b", "vs §2b", "<= 1%?"]
    if args.runs:
        headers.append(f"latency ms (batch {args.batch_size})")
    rows = []
    for entry in entries:
        if entry.variant in skipped:
            continue
        variant = VARIANTS[entry.variant]
        summary = original.get(entry.variant) if original else None
        is_vit = variant.backbone == "vit"
        for size in entry.settings:
            c = counts[(entry.variant, size)]
            ours = c.total if is_vit else c.total_excl_ssm
            ref = None
            if summary and summary.get(ORIGINAL_SETTING_KEY[size]):
                reference = summary[ORIGINAL_SETTING_KEY[size]]
                ref = 2 * reference["total_macs"] if is_vit else reference["total_excl_ssm_kernels_flops"]
            design = entry.design_gmacs.get(size) if entry.design_gmacs else None
            r_orig, r_design = rel(ours, ref), rel(g(ours), design)
            row = [entry.variant + ("" if is_vit else " (*)"), f"{size}x{size}", variant.num_tokens, f"{g(ours):.4f}", f"{g(c.scorer):.4f}",
                   f"{c.scorer / ours:.1%}", None if ref is None else f"{g(ref):.4f}", fmt_rel(r_orig), within(r_orig),
                   design, fmt_rel(r_design), within(r_design)]
            if args.runs:
                row.append(latency.get((entry.variant, size), 0.0) * 1e3)
            rows.append(row)
    print("## Forward cost per image (GMACs = FLOPs / 2)\n")
    print(markdown_table(headers, rows))
    print("\n`224x224` = the paper's setting (high_res=False: scorer on the 224 input, 7x7 map resized to 14x14); "
          "`448x448` = the released models' inference setting. (*) Vim: both sides EXCLUDE the SSM kernels (selective "
          "scan, causal conv1d), whose FlopCounterMode count depends on how they are implemented (see the Vim table).")

    # --------------------------------------------------------------------------------- breakdown table
    if counts:
        print("\n## Breakdown (GMACs; in brackets the relative difference to the original's component)\n")
        rows = []
        components = [
            ("scorer trunk", "scorer_trunk", "spn_features_flops"),
            ("scorer head", "scorer_head", "spn_mlp_flops"),
            ("projection", "projection", "patch_proj_flops"),
            ("tokenizer other", "tokenizer_other", "tokenizer_other_flops"),
            ("backbone + head", "backbone_head", "backbone_head_flops"),
        ]
        for (name, size), c in counts.items():
            summary = original.get(name) if original else None
            reference = summary.get(ORIGINAL_SETTING_KEY[size]) if summary else None
            row = [name, f"{size}x{size}"]
            for _, attr, key in components:
                ours = getattr(c, attr)
                cell = f"{g(ours):.4f}"
                if reference and key in reference:
                    cell += f" ({fmt_rel(rel(ours, reference[key]))})"
                row.append(cell)
            rows.append(row)
        print(markdown_table(["variant", "input"] + [n for n, _, _ in components], rows))
        print("\nscorer head = the scorer's FLOPs outside the trunk (its MLP; for head v2 also the gated channel sum, "
              "which the original does elementwise and does not count: +0.0002 GMACs). tokenizer other = the "
              "position-table resampling matmuls.")

    # ---------------------------------------------------------------------------------------- Vim table
    vim = [(k, c) for k, c in counts.items() if VARIANTS[k[0]].backbone != "vit"]
    if vim:
        print("\n## Vim: totals with and without the SSM kernels (GMACs)\n")
        rows = []
        for (name, size), c in vim:
            reference = (original or {}).get(name, {}).get(ORIGINAL_SETTING_KEY[size]) if original else None
            ref_total = reference["total_flops"] if reference else None
            ref_excl = reference["total_excl_ssm_kernels_flops"] if reference else None
            r_excl = rel(c.total_excl_ssm, ref_excl)
            rows.append([name, f"{size}x{size}", f"{g(c.total):.4f}", f"{g(c.ssm_kernels):.4f}",
                         f"{g(c.total_excl_ssm):.4f}",
                         None if ref_total is None else f"{g(ref_total):.4f}",
                         None if ref_excl is None else f"{g(ref_excl):.4f}", fmt_rel(r_excl), within(r_excl)])
        print(markdown_table(["variant", "input", "ours total", "ours SSM kernels", "ours excl. kernels",
                              "original total", "original excl. kernels", "excl. vs original", "<= 1%?"], rows))
        print("\nOurs, by aten op inside the bidirectional mixers (GMACs, summed over layers): what FlopCounterMode sees of our "
              "PyTorch path. The original counts per mixer: in_proj + out_proj + 2 x_proj + 2 dt_proj (+ its reference "
              "scan and conv1d kernels).\n")
        op_names = sorted({op for _, c in vim for op in (c.mixer_ops or {})})
        rows = [[name, f"{size}x{size}"] + [f"{g((c.mixer_ops or {}).get(op, 0)):.4f}" for op in op_names]
                for (name, size), c in vim]
        print(markdown_table(["variant", "input"] + op_names, rows))

    # --------------------------------------------------------------------------------------- params table
    print("\n## Parameters\n")
    rows = []
    for entry in entries:
        if entry.variant not in params:
            continue
        total, trainable, frozen = params[entry.variant]
        summary = original.get(entry.variant) if original else None
        ref = summary["params"] if summary else None
        rows.append([
            entry.variant, f"{total:,}", f"{trainable:,}", f"{frozen:,}",
            None if ref is None else f"{ref['total']:,}",
            "-" if ref is None else ("yes" if total == ref["total"] else f"NO ({total - ref['total']:+,})"),
            "-" if ref is None else ("yes" if (trainable, frozen) == (ref["trainable"], ref["frozen"]) else "NO"),
        ])
    print(markdown_table(["variant", "total", "trainable", "frozen (scorer trunk)", "original total",
                          "total equal?", "trainable/frozen equal?"], rows))
    print("\nParameters only (BatchNorm running statistics are buffers, excluded on both sides).")

    if skipped:
        print("\n## Skipped\n")
        for name, reason in skipped.items():
            print(f"- {name}: {reason}")

    failures = []
    for entry in entries:
        for size in entry.settings:
            c = counts.get((entry.variant, size))
            summary = original.get(entry.variant) if original else None
            if c is None or not summary or not summary.get(ORIGINAL_SETTING_KEY[size]):
                continue
            ref = summary[ORIGINAL_SETTING_KEY[size]]
            ours = c.total_excl_ssm if VARIANTS[entry.variant].backbone != "vit" else c.total
            reference = ref["total_excl_ssm_kernels_flops"] if VARIANTS[entry.variant].backbone != "vit" else (
                2 * ref["total_macs"])
            if abs(rel(ours, reference)) > TOLERANCE:
                failures.append(f"{entry.variant}@{size}")
    print(f"\nSummary: {len(counts)} (variant, input) counts; "
          + (f"all within {TOLERANCE:.0%} of the original" if original and not failures else
             (f"outside {TOLERANCE:.0%}: {', '.join(failures)}" if failures else "no reference available"))
          + (f"; skipped: {', '.join(skipped)}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
