#!/usr/bin/env python
"""Wrap a pretrained ViT / DeiT (Transformers folder or Hub id) or Vision Mamba (original `hustvl/Vim` `.pth`) in DART
and write a DART folder, ready to fine-tune with `examples/run_image_classification.py --model_name_or_path`.

    # plain ViT behaviour: a uniform scorer at the source's resolution reproduces the source's logits
    python conversion/convert_vit_to_dart.py --source facebook/deit-small-patch16-224 --output_dir dart-from-deit-s

    # the DART setting: 448 input, 14x14 score grid, a learned scorer (here with a pretrained trunk) to train
    python conversion/convert_vit_to_dart.py --source google/vit-base-patch16-384 --output_dir dart-from-vit-b \
        --scorer_trunk_weights efficientnet_lite0 --image_size 448 --score_grid_size 14

    # an original Vim checkpoint (cls token in the middle of the sequence)
    python conversion/convert_vit_to_dart.py --source vim_t_midclstok_76p1acc.pth --output_dir dart-from-vim-t

`--scorer_trunk_weights efficientnet_lite0` (packaged ImageNet weights) brings the recommended learned scorer: that
trunk, frozen, with the `saliency` head, unless `--scorer`, `--scorer_trunk` or `--scorer_head` say otherwise.

Supported Transformers architectures: ViTForImageClassification, DeiTForImageClassification and
DeiTForImageClassificationWithTeacher. DeiT's distillation token has no place in DART's backbone: it is left out (and
listed under `dropped` in the report), and the teacher model's two heads become one classifier, their average
(`--distillation_head average`, default) or the cls head (`--distillation_head cls`); such a model is close to, not
equal to, the source. A source trained on another grid (e.g. 384 input, 24x24) gets its position table resized to
`--score_grid_size` with the interpolation of Transformers' `interpolate_pos_encoding` (bicubic, align_corners=False).

Every source tensor maps onto exactly one DART tensor and every backbone tensor is filled: missing, unexpected or
mis-shaped keys, a source folder that lacks a tensor, non-finite weights and unsupported architectures stop the
conversion with exit code 2. The output folder (safetensors, config, preprocessor config, model card, modeling code)
is written through a temporary sibling folder that moves into place once complete; a non-empty one is written into
only with `--overwrite` (which replaces the files the converter writes and keeps the others), and never when it holds,
or lies inside, the source.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from conversion.convert_dart_original import write_verify_and_push  # noqa: E402
from modeling_dart import DartImageProcessor  # noqa: E402
from modeling_dart.conversion_utils import (  # noqa: E402
    ConversionError,
    UsageError,
    check_output_dir,
    positive_int,
    report_usage_error,
)
from modeling_dart.from_backbone import DISTILLATION_HEADS, SCORERS, convert_backbone  # noqa: E402
from modeling_dart.trunks_dart import recommended_scorer_fields  # noqa: E402

TRUNKS = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0")
HEADS = ("v1", "v2", "saliency")


def convert(source: str, **options):
    """`(model, processor, report)`; raises `ConversionError` (a clear message) on anything it cannot map."""
    try:
        model, processor_kwargs, report = convert_backbone(source, **options)
    except ValueError as error:  # bad option values: ConversionError is not one of them, so both get exit code 2
        if isinstance(error, ConversionError):
            raise
        raise ConversionError(str(error)) from error
    report = {"source": str(source), **report}
    return model, DartImageProcessor(**processor_kwargs), report


def model_card(source: str, report: dict, model) -> dict:
    is_file = Path(source).is_file()
    config = model.config
    scorer = ("a uniform scorer (the source's patch grid)" if config.scorer == "uniform"
              else f"a learned scorer to train: {report['scorer']}")
    dropped = "".join(f" `{key}` was left out: {why}." for key, why in report["dropped"].items())
    return dict(
        title=f"DART wrapping {Path(source).name if is_file else source}",
        base_model=None if is_file or Path(source).is_dir() else source,
        source=f"Wrapped from `{source}` ({report['architecture']}) with `conversion/convert_vit_to_dart.py`, with "
        f"{scorer}.{dropped}",
        task="image-classification",
        extra_facts={"source architecture": report["architecture"], "source grid": report["source_grid"],
                     "exact copy of the source": report["exact"], "parameters": f"{report['num_parameters']:,}"},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="Transformers ViT/DeiT folder or Hub id, or an original Vim .pth file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--scorer", choices=SCORERS,
                        help="uniform (the source's patch grid; the default) or learned (trunk + head to train; the "
                        "default with packaged --scorer_trunk_weights)")
    parser.add_argument("--scorer_trunk", choices=TRUNKS,
                        help="learned scorer: the CNN trunk (default: that of packaged --scorer_trunk_weights, else "
                        "the config's)")
    parser.add_argument("--scorer_head", choices=HEADS,
                        help="learned scorer: the score head (default: saliency with packaged --scorer_trunk_weights, "
                        "else the config's)")
    parser.add_argument("--scorer_trunk_depth", type=positive_int, help="learned scorer: how many trunk entries to keep")
    parser.add_argument("--scorer_trunk_weights", metavar="SOURCE",
                        help="learned scorer: pretrained trunk weights for `load_scorer_trunk_weights` (e.g. "
                        "efficientnet_lite0, or a .pth); without it the trunk is random and left trainable")
    parser.add_argument("--freeze_scorer_trunk", choices=["true", "false"],
                        help="default: frozen with pretrained trunk weights, trainable without")
    parser.add_argument("--image_size", type=positive_int, help="input resolution (default: score_grid_size * patch_size)")
    parser.add_argument("--score_grid_size", type=positive_int, help="score/position grid (default: the source's grid)")
    parser.add_argument("--num_tokens", type=positive_int, help="default number of tokens (default: score_grid_size ** 2)")
    parser.add_argument("--distillation_head", choices=DISTILLATION_HEADS, default="average",
                        help="DeiT with teacher: average the cls and distillation heads (default) or keep the cls head")
    parser.add_argument("--weights", choices=["model", "model_ema"], default="model",
                        help="Vim .pth: which state dict of a training checkpoint (default: model)")
    parser.add_argument("--revision", help="Hub revision of the source (a Hub id only)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true", help="reload the folder and compare tensors and logits")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)
    if args.revision and Path(args.source).exists():
        parser.error(f"--revision {args.revision} applies to a Hub id; --source {args.source} is a local path.")

    # packaged trunk weights (e.g. efficientnet_lite0) bring the recommended learned scorer where the flags leave it open
    chosen = {name: value for name, value in (("scorer", args.scorer), ("scorer_trunk", args.scorer_trunk),
                                               ("scorer_head", args.scorer_head)) if value is not None}
    recommended = recommended_scorer_fields(args.scorer_trunk_weights, chosen)
    options = {
        "scorer": args.scorer or recommended.get("scorer", "uniform"),
        "scorer_trunk": args.scorer_trunk or recommended.get("scorer_trunk"),
        "scorer_head": args.scorer_head or recommended.get("scorer_head"),
        "scorer_trunk_depth": args.scorer_trunk_depth, "scorer_trunk_weights": args.scorer_trunk_weights,
        "freeze_scorer_trunk": None if args.freeze_scorer_trunk is None else args.freeze_scorer_trunk == "true",
        "image_size": args.image_size, "score_grid_size": args.score_grid_size, "num_tokens": args.num_tokens,
        "weights": args.weights,
    }
    if not Path(args.source).is_file():
        options["distillation_head"] = args.distillation_head
        if args.revision:
            options["revision"] = args.revision
    inputs = {"--source": args.source, "--scorer_trunk_weights": args.scorer_trunk_weights}
    try:
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite, inputs=inputs)
        model, processor, report = convert(args.source, **options)
        write_verify_and_push(output_dir, model, processor, report, model_card(args.source, report, model), args)
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
