#!/usr/bin/env python
"""Convert the image reshaper of the authors' segmentation checkpoints (the `ykx3/DART` fork's `ReshaperWithInverse`
in an MMSegmentation segmentor, keys `reshaper.spn.spn.spn.*`) into this package's `DartImageReshaper`.

    python conversion/convert_seg_reshaper_original.py --checkpoint segmentor.pth --output_dir out
        [--segmenter FOLDER_OR_HUB_ID] [--image_size 512] [--clean_warp] [--golden GOLDEN.safetensors]
        [--verify] [--overwrite]

The checkpoint is read with `torch.load(..., weights_only=True)`; its state dict is the `state_dict` entry
(MMSegmentation) or the `model` entry. The reshaper's keys are those under one `...reshaper.` prefix; each maps to
exactly one tensor of the reshaper (`spn.spn.spn.features.*` -> `scorer.features.*`, `spn.spn.spn.mlp.net.{0,2}.*`
-> `scorer.head.fc{1,2}.*`), and every tensor of the reshaper is filled: an unknown, missing or mis-shaped key is an
error. The segmentor's other keys (its MMSegmentation backbone and heads) are not converted and are counted in the
report: the segmentation model comes from Transformers' own weights or the RMT converter (`--segmenter`).

The architecture is read from the checkpoint: the scorer trunk (the trunk table entry whose keys and shapes the
`features.*` keys fill: EfficientNet-B0 for the fork) and its depth from the `features.N` entries, the head from the
MLP's shapes (head v1, `Linear(C, hidden) -> GELU -> Linear(hidden, 1)`; a v2 head is refused). The fork warps an
`H x W` image into an image of the same size, with 16-pixel cells and a score grid of `H / 16 x W / 16` that follows
the input's size and shape: here `downscale_factor` is 1 and `score_grid_per_cell` is on, for inputs of any size
and shape whose sides are multiples of 16. `--image_size` is the size the model is built and checked at
(`image_size`, the `score_grid_size` the scorer is constructed with). The warp keeps the fork's quirks (`DAIR_PARITY_OPTIONS`: batch-wide score
standardisation, the first edge at one pixel, the edge scale of the batch's first image, sampling along the strip of
row bands) unless `--clean_warp` asks for this package's defaults.

Output:
- with `--segmenter` (a folder or Hub id of any `AutoModelForSemanticSegmentation`, e.g. UperNet with Swin, ConvNeXt
  or RMT): a `DartReshaperForSemanticSegmentation` folder, the reshaper converted here in front of that model with
  its weights (a folder whose weights miss or mis-shape a tensor is refused);
- without it: the reshaper alone, `reshaper.safetensors` (this package's key names) and `reshaper_config.json` (the
  `DartImageReshaper` arguments); `load_converted_reshaper(folder)` rebuilds it.

`--golden` compares the converted reshaper with a fork golden file (`dair_seg_reshaper_golden.safetensors`): on every
case, the scorer's trunk features and MLP output, the score, density, row heights, column widths, strip edges and
warped image. Tolerances are the fixtures README's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # running from a clone without installing
    sys.path.insert(0, str(REPO_ROOT))

from modeling_dart.configuration_reshaper_dart import (
    DAIR_PARITY_OPTIONS,
    DartReshaperConfig,
)
from modeling_dart.conversion_utils import (
    ConversionError,
    StagedOutput,
    UsageError,
    account_keys,
    check_model_source,
    check_output_dir,
    load_complete_model,
    load_original_checkpoint,
    report_usage_error,
    require_finite,
)
from modeling_dart.reshaper_dart import DartImageReshaper, original_reshaper_key
from modeling_dart.trunk_tables_dart import TRUNKS

PATCH_SIZE = 16  # the fork's cell side: `ReshaperWithInverse` ignores its `patch_size` argument
SCORER = "spn.spn.spn."
RESHAPER_WEIGHTS = "reshaper.safetensors"
RESHAPER_CONFIG = "reshaper_config.json"
# the share of the checkpoint's tensors (name and shape) that a trunk of the table must hold to be taken for it
MIN_TRUNK_OVERLAP = 0.9
# this package's warp defaults, written out so that `reshaper_config.json` says which warp it is
CLEAN_WARP = {"score_normalization": "image", "first_edge_at_one": False, "edge_scale_from_first_image": False,
              "column_sampling": "band"}
_FEATURE_INDEX = re.compile(r"^spn\.spn\.spn\.features\.(\d+)\.")
# what the fork's golden file stores per case, the README's tolerance, and our output that it compares with
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GOLDEN_TOLERANCES = {"score": 1e-4, "pdf": 2e-7, "row_heights": 2e-3, "col_heights": 2e-3, "new_edges": 1e-2,
                     "warped_image": 2e-2, "spn_features_first16ch": 1e-1, "spn_mlp_out": 1e-2}


def reshaper_keys(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, torch.Tensor]]:
    """`(prefix, keys)`: the reshaper's keys of a segmentor state dict, relative to their one `...reshaper.` prefix
    (`reshaper.` in the fork's segmentor). A checkpoint without them, or with several reshapers, is refused."""
    prefixes = {key[: key.index(SCORER)] for key in state_dict if SCORER in key}
    if not prefixes:
        if any(key.startswith("pre_image.") for key in state_dict):
            raise ConversionError("this is a DARMT classification checkpoint (`pre_image.*` keys), not a segmentor; "
                                  "convert it with conversion/convert_dart_original.py --variant darmt_l6.")
        if any(key.startswith("patch_embed.spn.") for key in state_dict):
            raise ConversionError("this is a token DART checkpoint (`patch_embed.spn.*` keys: darvit_* / darvim_*); "
                                  "convert it with conversion/convert_dart_original.py.")
        raise ConversionError(f"no `reshaper.{SCORER}*` keys: not a checkpoint of the segmentation fork's reshaper "
                              f"(first keys: {sorted(state_dict)[:4]}).")
    if len(prefixes) > 1 or not next(iter(prefixes)).endswith("reshaper."):
        raise ConversionError(f"the scorer keys `*{SCORER}*` sit under {sorted(prefixes)}; expected one "
                              "`...reshaper.` prefix (the segmentor's reshaper).")
    prefix = prefixes.pop()
    keys = {key[len(prefix):]: tensor for key, tensor in state_dict.items() if key.startswith(prefix)}
    return prefix, keys


def infer_reshaper_kwargs(keys: dict[str, torch.Tensor], image_size: int = 512, clean_warp: bool = False) -> dict:
    """The `DartImageReshaper` arguments of the fork's reshaper keys (relative to `reshaper.`): the trunk and its
    depth from the `features.*` keys, the head's hidden width from its MLP; a `ConversionError` for what our
    reshaper cannot hold."""
    if image_size % PATCH_SIZE:
        raise UsageError(f"--image_size must be a multiple of {PATCH_SIZE} (the fork's cell side), got {image_size}.")
    fc1, fc2 = keys.get(f"{SCORER}mlp.net.0.weight"), keys.get(f"{SCORER}mlp.net.2.weight")
    if fc1 is None or fc2 is None or fc1.dim() != 2 or fc2.dim() != 2:
        raise ConversionError(f"the score head's MLP is missing or mis-shaped: expected 2-D `{SCORER}mlp.net.0.weight`"
                              f" and `{SCORER}mlp.net.2.weight`.")
    hidden, channels = fc1.shape
    if fc2.shape[1] != hidden:
        raise ConversionError(f"{SCORER}mlp.net.2.weight has shape {tuple(fc2.shape)}: its input is not the MLP's "
                              f"hidden width {hidden}.")
    if fc2.shape[0] != 1:
        raise ConversionError(f"the score head's MLP returns {fc2.shape[0]} values per position (a v2 channel-gate "
                              "head); the fork's segmentation reshaper has head v1 (one score per position), the only "
                              "one whose original weights load into the reshaper.")
    indices = {int(m.group(1)) for key in keys if (m := _FEATURE_INDEX.match(key))}
    if not indices:
        raise ConversionError(f"no `{SCORER}features.N.*` keys: the scorer's trunk is missing.")
    depth = max(indices) + 1
    if indices != set(range(depth)):
        raise ConversionError(f"the trunk's `features.N` entries are not contiguous: {sorted(indices)}.")
    for key in keys:
        try:
            original_reshaper_key(key)
        except KeyError:
            raise ConversionError(f"key {key!r} under the reshaper's prefix is not a key of the fork's reshaper "
                                  f"({SCORER}features.* or {SCORER}mlp.net.{{0,2}}.*).") from None
    stem = keys.get(f"{SCORER}features.0.0.weight")
    base = dict(scorer="learned", scorer_head="v1", scorer_hidden_size=int(hidden), scorer_trunk_depth=depth,
                score_grid_size=image_size // PATCH_SIZE, score_grid_per_cell=True, patch_size=PATCH_SIZE,
                downscale_factor=1,
                num_channels=int(stem.shape[1]) if stem is not None and stem.dim() == 4 else 3)
    base.update(CLEAN_WARP if clean_warp else DAIR_PARITY_OPTIONS)
    # the trunk whose tensors (names and shapes) the keys fill best; a near miss (a key missing or mis-shaped) is
    # left to the key accounting, which names the keys
    mapped = {original_reshaper_key(key): tuple(tensor.shape) for key, tensor in keys.items()}
    best, best_overlap, tried = None, 0.0, []
    for trunk in TRUNKS:
        try:
            reshaper = DartImageReshaper(scorer_trunk=trunk, **base)
        except (ValueError, TypeError) as error:  # e.g. a depth beyond this trunk's
            tried.append(f"{trunk}: {error}")
            continue
        own = {key: tuple(tensor.shape) for key, tensor in reshaper.state_dict().items()}
        overlap = sum(own.get(key) == shape for key, shape in mapped.items()) / len(set(own) | set(mapped))
        tried.append(f"{trunk}: {overlap:.0%} of the tensors fit")
        if overlap > best_overlap:
            best, best_overlap = trunk, overlap
    if best is None or best_overlap < MIN_TRUNK_OVERLAP:
        raise ConversionError(f"the scorer's trunk ({depth} `features` entries, head input width {channels}) matches "
                              f"no trunk of the table ({'; '.join(tried)}).")
    return {"scorer_trunk": best, **base}


def convert_reshaper(checkpoint: str | Path, image_size: int = 512, clean_warp: bool = False):
    """Return `(reshaper, kwargs, report)`: a `DartImageReshaper` (eval mode) holding the segmentor checkpoint's
    reshaper, the arguments that build it, and what was converted."""
    state_dict = load_original_checkpoint(checkpoint, "state_dict|model")
    prefix, keys = reshaper_keys(state_dict)
    kwargs = infer_reshaper_kwargs(keys, image_size, clean_warp)
    reshaper = DartImageReshaper(**kwargs).eval()
    converted = account_keys(keys, reshaper.state_dict(), original_reshaper_key, "the image reshaper built from it")
    require_finite(converted, "the checkpoint's reshaper")
    reshaper.load_state_dict(converted, strict=True)
    report = {
        "prefix": prefix,
        "scorer_trunk": kwargs["scorer_trunk"],
        "scorer_trunk_depth": kwargs["scorer_trunk_depth"],
        "scorer_hidden_size": kwargs["scorer_hidden_size"],
        "score_grid": "one cell per 16x16 warped cell (H / 16 x W / 16)",
        "warp": "clean" if clean_warp else "original (DAIR_PARITY_OPTIONS)",
        "num_keys": len(converted),
        "num_parameters": sum(p.numel() for p in reshaper.parameters()),
        "segmentor_keys_not_converted": len(state_dict) - len(keys),
    }
    return reshaper, kwargs, report


def assemble_segmenter(reshaper: DartImageReshaper, kwargs: dict, segmenter: str, image_size: int):
    """A `DartReshaperForSemanticSegmentation` of the converted reshaper in front of the segmentation model of
    `segmenter` (a folder or Hub id), with both models' weights."""
    from transformers import AutoBackbone, AutoModelForSemanticSegmentation

    from modeling_dart.configuration_reshaper_dart import LOCAL_BACKBONE_CONFIGS
    from modeling_dart.modeling_reshaper_dart import (
        LOCAL_BACKBONES,
        DartReshaperForSemanticSegmentation,
    )

    for model_type, backbone_class in LOCAL_BACKBONES.items():
        AutoBackbone.register(LOCAL_BACKBONE_CONFIGS[model_type], backbone_class, exist_ok=True)
    check_model_source("--segmenter", segmenter)
    model = load_complete_model(AutoModelForSemanticSegmentation, segmenter, "--segmenter")
    fields = {key: value for key, value in kwargs.items() if key != "scorer"}
    try:
        config = DartReshaperConfig(backbone_config=model.config, image_size=image_size, scorer="learned", **fields)
        combined = DartReshaperForSemanticSegmentation(config).eval()
    except (ValueError, TypeError) as error:
        raise ConversionError(f"--segmenter {segmenter}: {error}") from error
    combined.reshaper.load_state_dict(reshaper.state_dict(), strict=True)
    combined.backbone.load_state_dict(model.state_dict(), strict=True)
    return combined


def save_reshaper(reshaper: DartImageReshaper, kwargs: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({key: tensor.contiguous() for key, tensor in reshaper.state_dict().items()}, folder / RESHAPER_WEIGHTS)
    (folder / RESHAPER_CONFIG).write_text(json.dumps(kwargs, indent=1) + "\n")


def load_converted_reshaper(folder: str | Path) -> DartImageReshaper:
    """The `DartImageReshaper` that this script wrote to `folder` (without `--segmenter`), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    kwargs = json.loads((folder / RESHAPER_CONFIG).read_text())
    reshaper = DartImageReshaper(**kwargs).eval()
    reshaper.load_state_dict(load_file(folder / RESHAPER_WEIGHTS), strict=True)
    return reshaper


def compare_with_golden(reshaper: DartImageReshaper, kwargs: dict, golden: str | Path) -> dict:
    """Run the converted reshaper on every case of a fork golden file and return `{case: {tensor: largest
    difference}}`; a `ConversionError` names every tensor beyond the README's tolerance."""
    from safetensors import safe_open

    path = Path(golden)
    if not path.is_file():
        raise UsageError(f"--golden {golden} is not a file.")
    try:
        with safe_open(path, "pt") as handle:
            stored = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # not a safetensors file
        raise UsageError(f"--golden {golden}: cannot read it as safetensors: {error}") from error
    cases = sorted({key.split(".", 1)[0] for key in stored if key.endswith(".images_uint8")})
    if not cases:
        raise UsageError(f"--golden {golden} holds no `<case>.images_uint8` inputs: not a fork golden file.")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    errors, failures = {}, []
    for case in cases:
        g = {key[len(case) + 1:]: tensor for key, tensor in stored.items() if key.startswith(case + ".")}
        pixels = (g["images_uint8"].float() / 255 - mean) / std
        batch = pixels.shape[0]
        ours = {}
        with torch.no_grad():
            features = reshaper.scorer.extract_features(pixels)
            ours["spn_features_first16ch"] = features[:, :16]
            ours["spn_mlp_out"] = reshaper.scorer.head(features.permute(0, 2, 3, 1))
            out = reshaper(pixels)
            ours.update(score=out.score_map.reshape(batch, -1), pdf=out.pdf, row_heights=out.row_heights,
                        col_heights=out.col_widths, new_edges=out.strip_edges, warped_image=out.warped_pixel_values)
        errors[case] = {}
        for name, value in ours.items():
            if name not in g:
                continue
            if tuple(value.shape) != tuple(g[name].shape):
                failures.append(f"{case}.{name} (shape {tuple(value.shape)}, stored {tuple(g[name].shape)})")
                continue
            difference = float((value.double() - g[name].double()).abs().max())
            errors[case][name] = difference
            if not difference <= GOLDEN_TOLERANCES[name]:
                failures.append(f"{case}.{name} (largest difference {difference:.3g}, tolerance "
                                f"{GOLDEN_TOLERANCES[name]:g})")
    if failures:
        raise ConversionError(f"the converted reshaper does not reproduce the golden file: {', '.join(failures)}.")
    return errors


def verify_folder(folder: Path, model) -> None:
    """Reload `folder` and check every tensor and the output of one random batch against `model`."""
    if isinstance(model, DartImageReshaper):
        reloaded = load_converted_reshaper(folder)
    else:
        from modeling_dart.modeling_reshaper_dart import (
            DartReshaperForSemanticSegmentation,
        )

        reloaded = DartReshaperForSemanticSegmentation.from_pretrained(folder).eval()
    saved = reloaded.state_dict()
    for key, tensor in model.state_dict().items():
        if key not in saved or not torch.equal(saved[key], tensor):
            raise ConversionError(f"saved tensor {key} differs from the converted one.")
    size = PATCH_SIZE * (model.grid_size if isinstance(model, DartImageReshaper) else model.config.score_grid_size)
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if isinstance(model, DartImageReshaper):
            expected, actual = model(pixels).warped_pixel_values, reloaded(pixels).warped_pixel_values
        else:
            expected, actual = model(pixels).logits, reloaded(pixels).logits
    if not torch.equal(actual, expected):
        raise ConversionError("the reloaded model does not reproduce the converted model's output (largest "
                              f"difference {float((actual - expected).abs().max()):.3g}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the segmentor's .pth file (keys `reshaper.*`)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--segmenter", default=None,
                        help="folder or Hub id of the segmentation model to put behind the reshaper (UperNet with "
                        "Swin / ConvNeXt / RMT, ...); without it only the reshaper is written")
    parser.add_argument("--image_size", type=int, default=512,
                        help="input side the model is built and verified at (default 512); any size whose sides are multiples "
                        "of 16 runs, with a score grid of H / 16 x W / 16")
    parser.add_argument("--clean_warp", action="store_true",
                        help="this package's warp defaults instead of the fork's quirks (DAIR_PARITY_OPTIONS)")
    parser.add_argument("--golden", default=None,
                        help="a fork golden file (dair_seg_reshaper_golden.safetensors) to compare with")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing, non-empty output folder: the files the converter writes are "
                        "replaced, the others kept")
    parser.add_argument("--verify", action="store_true",
                        help="reload the folder and compare every tensor and the output of a random batch")
    args = parser.parse_args(argv)
    try:
        if args.image_size < PATCH_SIZE:
            raise UsageError(f"--image_size must be a positive multiple of {PATCH_SIZE}, got {args.image_size}.")
        if args.golden is not None and args.clean_warp:
            raise UsageError("--golden compares with the fork, whose warp --clean_warp leaves: give one of them.")
        output_dir = check_output_dir(args.output_dir, overwrite=args.overwrite,
                                      inputs={"--checkpoint": args.checkpoint, "--segmenter": args.segmenter,
                                              "--golden": args.golden})
        reshaper, kwargs, report = convert_reshaper(args.checkpoint, args.image_size, args.clean_warp)
        if args.golden is not None:
            report["golden_largest_differences"] = compare_with_golden(reshaper, kwargs, args.golden)
        model = reshaper
        if args.segmenter is not None:
            model = assemble_segmenter(reshaper, kwargs, args.segmenter, args.image_size)
            report["segmenter"] = args.segmenter
        with StagedOutput(output_dir) as folder:
            if args.segmenter is None:
                save_reshaper(reshaper, kwargs, folder)
            else:
                model.save_pretrained(folder)
            print(json.dumps(report, indent=1))
            if args.verify:
                verify_folder(folder, model)
                print(f"verified: {len(model.state_dict())} tensors equal after reload; output reproduced")
    except (ConversionError, UsageError) as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
