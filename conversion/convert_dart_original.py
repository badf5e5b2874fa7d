#!/usr/bin/env python
"""Convert original DART checkpoints (darvit_* / darvim_*, HCPLab-SYSU/DART) into Hugging Face folders.

    python conversion/convert_dart_original.py --variant darvit_tiny --checkpoint darvit_tiny.pth \
        --output_dir dart-deit-ti [--weights model_ema] [--verify] [--push_to_hub org/dart-deit-ti] [--overwrite]

The checkpoint is read with `torch.load(..., weights_only=True)` (only `argparse.Namespace` is allow-listed, for the
`args` entry of training checkpoints). Every key is accounted for: each original tensor maps to exactly one parameter or
buffer of the converted model, and each of those is filled; any missing, unexpected or mis-shaped key is an error.
The depth is read from the checkpoint, so reduced-depth files convert too; everything else must match the variant.
Weights with NaN or infinite values are refused. The folder is written through a temporary sibling folder that moves
into place only once it is complete (and verified, with `--verify`); an output folder that holds, or lies inside, the
checkpoint is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart import DartConfig, DartForImageClassification, DartImageProcessor  # noqa: E402
from modeling_dart.conversion_utils import (  # noqa: E402,F401  (shared with the other converters; re-exported)
    VIM_KEY_RULES,
    ConversionError,
    StagedOutput,
    UsageError,
    account_keys,
    check_output_dir,
    compile_rules,
    infer_depth,
    load_original_checkpoint,
    rename_key,
    report_usage_error,
    require_finite,
    safe_torch_load,
)
from modeling_dart.model_card import write_model_card  # noqa: E402

ASSETS = Path(__file__).resolve().parent / "assets"
LABELS_FILE = REPO_ROOT / "modeling_dart" / "data" / "imagenet1k_id2label.json"
ORIGINAL_REPO = "https://github.com/HCPLab-SYSU/DART"


@dataclass(frozen=True)
class Variant:
    name: str
    hub_name: str
    backbone: str
    hidden_size: int
    num_heads: int
    trunk: str
    head: str
    num_tokens: int
    depth: int
    paper_top1: float | None = None

    def config_kwargs(self) -> dict:
        kwargs = dict(
            backbone=self.backbone,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.depth,
            scorer_trunk=self.trunk,
            scorer_head=self.head,
            num_tokens=self.num_tokens,
            image_size=448,
            patch_size=16,
            score_grid_size=14,
        )
        if self.backbone == "vit":
            kwargs.update(num_attention_heads=self.num_heads, intermediate_size=4 * self.hidden_size,
                          layer_norm_eps=1e-6, qkv_bias=True)
        return kwargs


# The released variants (DESIGN.md §1-2, fixtures manifests). Heads: darvit_tiny* Small/v1 (v2 for _v2),
# darvit_sm* Large/v1, darvim_tiny* Small/v2, darvim_sm* Large/v2.
VARIANTS = {
    v.name: v
    for v in [
        Variant("darvit_tiny", "dart-deit-ti", "vit", 192, 3, "mobilenet_v3_small", "v1", 196, 12),
        Variant("darvit_tiny_v2", "dart-deit-ti-v2", "vit", 192, 3, "mobilenet_v3_small", "v2", 196, 12),
        Variant("darvit_tiny_121p", "dart-deit-ti-121", "vit", 192, 3, "mobilenet_v3_small", "v1", 121, 12),
        Variant("darvit_sm", "dart-deit-s", "vit", 384, 6, "mobilenet_v3_large", "v1", 196, 12),
        Variant("darvit_sm_144p", "dart-deit-s-144", "vit", 384, 6, "mobilenet_v3_large", "v1", 144, 12),
        Variant("darvit_sm_288p", "dart-deit-s-288", "vit", 384, 6, "mobilenet_v3_large", "v1", 288, 12),
        Variant("darvit_sm_392p", "dart-deit-s-392", "vit", 384, 6, "mobilenet_v3_large", "v1", 392, 12),
        Variant("darvim_tiny", "dart-vim-ti", "vim", 192, 0, "mobilenet_v3_small", "v2", 196, 24),
        Variant("darvim_tiny_2seq", "dart-vim-ti-392", "vim", 192, 0, "mobilenet_v3_small", "v2", 392, 24),
        Variant("darvim_sm", "dart-vim-s", "vim", 384, 0, "mobilenet_v3_large", "v2", 196, 24),
        Variant("darvim_sm_2seq", "dart-vim-s-392", "vim", 384, 0, "mobilenet_v3_large", "v2", 392, 24),
    ]
}

# (pattern on the original key, replacement in the HF model); applied in order, first match wins
_SCORER = r"patch_embed\.spn\.spn\.spn\."
KEY_RULES: list[tuple[str, str]] = [
    (_SCORER + r"features\.(.+)$", r"dart.embeddings.scorer.features.\1"),
    (_SCORER + r"mlp\.net\.0\.(weight|bias)$", r"dart.embeddings.scorer.head.fc1.\1"),
    (_SCORER + r"mlp\.net\.2\.(weight|bias)$", r"dart.embeddings.scorer.head.fc2.\1"),
    # DeiT blocks
    (r"blocks\.(\d+)\.norm1\.(weight|bias)$", r"dart.encoder.layer.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)$", r"dart.encoder.layer.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", r"dart.encoder.layer.\1.attention.\2.\3"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)$", r"dart.encoder.layer.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)$", r"dart.encoder.layernorm.\1"),
    # patch projection, cls token, position table, Vim blocks, head (the Vim release's keys, shared with DeiT)
    *VIM_KEY_RULES,
]


_COMPILED_RULES = compile_rules(KEY_RULES)


def convert_key(key: str) -> str | None:
    """The HF name of an original key, or None when no rule matches."""
    return rename_key(key, _COMPILED_RULES)


def build_config(variant: Variant, state_dict: dict[str, torch.Tensor]) -> DartConfig:
    depth = infer_depth(state_dict, variant.backbone)
    head = state_dict.get("head.weight")
    if head is None:
        raise ConversionError("missing key 'head.weight' (the classifier).")
    num_labels = head.shape[0]
    if num_labels == 1000 and LABELS_FILE.is_file():
        id2label = {int(k): v for k, v in json.loads(LABELS_FILE.read_text()).items()}
    else:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    kwargs = variant.config_kwargs()
    kwargs["num_hidden_layers"] = depth
    return DartConfig(**kwargs, id2label=id2label, label2id={v: k for k, v in id2label.items()})


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map every original key onto `model`; raise on unmatched, missing or mis-shaped keys."""
    return account_keys(state_dict, model.state_dict(), convert_key, "the variant")


def convert(variant_name: str, checkpoint: str | Path, weights: str = "model"):
    """Return `(model, processor, report)` for an original checkpoint."""
    if variant_name not in VARIANTS:
        raise ConversionError(f"unknown variant {variant_name!r}; choose one of {sorted(VARIANTS)}")
    variant = VARIANTS[variant_name]
    state_dict = load_original_checkpoint(checkpoint, weights)
    config = build_config(variant, state_dict)
    model = DartForImageClassification(config).eval()
    converted = convert_state_dict(state_dict, model)
    model.load_state_dict(converted, strict=True)
    processor = DartImageProcessor()
    report = {
        "variant": variant.name,
        "hub_name": variant.hub_name,
        "weights": weights,
        "depth": config.num_hidden_layers,
        "full_depth": config.num_hidden_layers == variant.depth,
        "num_keys": len(converted),
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, report


def top5(model, processor, image_path: Path) -> list[tuple[str, float]]:
    from PIL import Image

    inputs = processor(Image.open(image_path), return_tensors="pt")
    with torch.no_grad():
        probs = model(**inputs).logits.softmax(-1)[0]
    values, indices = probs.topk(5)
    return [(model.config.id2label[int(i)], float(v)) for v, i in zip(values, indices)]


def verify_folder(output_dir: Path, model, state_dict_converted: dict[str, torch.Tensor]) -> None:
    """Reload the saved folder (image or video model) and check every tensor and one forward pass against the
    in-memory model."""
    reloaded = type(model).from_pretrained(output_dir).eval()
    saved = reloaded.state_dict()
    for key, tensor in state_dict_converted.items():
        if not torch.equal(saved[key], tensor):
            raise ConversionError(f"saved tensor {key} differs from the converted one")
    config = model.config
    shape = (1, config.num_channels, config.image_size, config.image_size)
    if config.backbone == "videomamba":
        shape = (1, config.num_frames, *shape[1:])
    pixels = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = model(pixels).logits, reloaded(pixels).logits
    # the tensors are equal (checked above), the logits to float32 rounding: the reloaded tensors sit at other memory
    # alignments (safetensors offsets), and CPU BLAS kernels round differently by alignment (2.4e-7 seen in a Linear)
    if not torch.allclose(actual, expected, rtol=0, atol=1e-5 * max(1.0, float(expected.abs().max()))):
        raise ConversionError("the reloaded model does not reproduce the converted model's logits "
                              f"(max difference {float((actual - expected).abs().max()):.3g})")


def push_folder(output_dir: Path, repo_id: str, private: bool = False) -> None:
    """Upload every file of the folder in one commit (create the repo if needed)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=str(path.relative_to(output_dir)), path_or_fileobj=str(path))
        for path in sorted(output_dir.rglob("*"))
        if path.is_file()
    ]
    api.create_commit(repo_id, operations=operations, commit_message="Upload DART model converted from the original release")


def write_verify_and_push(output_dir: Path, model, processor, report: dict, card: dict, args) -> None:
    """The shared tail of the converters: refuse non-finite weights, write the folder (weights, config, processor,
    model card) through a temporary sibling folder, print the report, `--verify` it (reload and compare every tensor)
    before it moves into place, then `--push_to_hub` as asked in `args`. A failure leaves `output_dir` as it was; an
    existing one (`--overwrite`) keeps the files the converter does not write."""
    require_finite(model.state_dict(), "the converted model")
    with StagedOutput(output_dir) as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        write_model_card(folder, model.config, **card)
        print(json.dumps(report, indent=1))
        if args.verify:
            verify_folder(folder, model, model.state_dict())
            print(f"verified: {report['num_keys']} tensors equal after reload; logits reproduced")
    if args.push_to_hub:
        push_folder(output_dir, args.push_to_hub, private=args.private)
        print(f"pushed {output_dir} to https://huggingface.co/{args.push_to_hub}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--checkpoint", required=True, help="original .pth file")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--weights", choices=["model", "model_ema"], default="model",
                        help="which state dict of a training checkpoint to convert (default: model)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true",
                        help="reload the folder, compare every tensor, print the top-5 labels of a bundled photo")
    parser.add_argument("--push_to_hub", metavar="REPO", default=None, help="upload the folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    args = parser.parse_args(argv)

    try:
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite,
                                      inputs={"--checkpoint": args.checkpoint})
        model, processor, report = convert(args.variant, args.checkpoint, args.weights)
        card = dict(
            title=f"DART {VARIANTS[args.variant].hub_name}",
            base_model=None,
            source=f"Converted from the original `{args.variant}` checkpoint of [DART]({ORIGINAL_REPO}) "
            f"(`{args.weights}` weights) with `conversion/convert_dart_original.py`.",
            task="image-classification",
            extra_facts={"original variant": args.variant, "converted weights": args.weights,
                         "depth": report["depth"], "parameters": f"{report['num_parameters']:,}"},
        )
        write_verify_and_push(output_dir, model, processor, report, card, args)
        if args.verify:
            for label, prob in top5(model, processor, ASSETS / "chelsea.jpg"):
                print(f"  {prob:7.4f}  {label}")
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
