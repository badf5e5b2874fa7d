#!/usr/bin/env python
"""DART quick start: train a DART classifier whose tokens land on the object, use it, and look at its tokens.

    python examples/quickstart.py            # 6-13 minutes on 2 CPU cores (benchmarks/README.md, Quick start)

1. writes sparse-object canvases (`examples/data/sparse_canvas.py`: real Fashion-MNIST articles of 28-42 pixels on
   160x160 textured backgrounds, 4000 train / 1000 validation, the same for every run) as an `imagefolder` tree under
   `outputs/quickstart_data` (beside the output folder: a training run never writes into a folder holding its data);
2. trains a small DART-DeiT (4 layers, width 96, 36 tokens) whose scorer is the frozen ImageNet EfficientNet-Lite0
   trunk with the saliency head (`run_image_classification.py --preset quickstart` with the saliency head in place
   of the recommended scorer's mil head: `QUICKSTART_DEMO_SCORER`), and prints its validation accuracy next to the
   uniform grid's in `benchmarks/dart_vs_uniform.py`;
3. reloads the saved folder with `pipeline("image-classification", model=folder)` and classifies six validation
   images;
4. draws where the tokens went for those images into `outputs/quickstart/token_regions.png` (top row: token regions;
   bottom row: the same over the score map), with each article's box in white, and counts the images whose finest
   token lies on the article.

Any argument of `run_image_classification.py` can be added to override the preset, e.g.
`python examples/quickstart.py --num_train_epochs 5 --output_dir outputs/qs5`; a second run into the same output
folder needs `--overwrite_output_dir true`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES_DIR))
sys.path.insert(0, str(EXAMPLES_DIR / "data"))

import run_image_classification as runner  # noqa: E402
import sparse_canvas  # noqa: E402

CANVASES = {"train": 4000, "validation": 1000}
# The demo's scorer: the saliency head on the trunk cut at depth 4, in place of the preset's recommended mil head on
# the depth-12 cut. On these smooth canvases the trunk's saliency prior already finds the article, and the deeper
# trunk pass triples the training time (benchmarks/README.md, Quick start). A `--config_overrides` of the user's
# replaces this whole set, as it would the preset's.
QUICKSTART_DEMO_SCORER = {"scorer_head": "saliency", "scorer_trunk_depth": 4}
BENCHMARK_RESULTS = EXAMPLES_DIR.parent / "benchmarks" / "results" / "dart_vs_uniform.json"


def write_data(root: Path, counts: dict[str, int]) -> None:
    """The canvases as an imagefolder tree (skipped when `root` already holds the same ones)."""
    stamp = root / "canvases.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == counts:
        return
    sparse_canvas.write_imagefolder(root, counts)
    stamp.write_text(json.dumps(counts) + "\n")


def pick_validation_images(root: Path, count: int) -> list[tuple[Path, str, list[float]]]:
    """The first canvas of each of the first `count` classes, with its article box."""
    boxes = json.loads((root / "boxes_validation.json").read_text())
    chosen = []
    for class_dir in sorted(p for p in (root / "validation").iterdir() if p.is_dir()):
        path = sorted(class_dir.glob("*.jpg"))[0]
        chosen.append((path, class_dir.name, boxes[f"{class_dir.name}/{path.name}"]))
        if len(chosen) == count:
            break
    return chosen


def uniform_figure(num_tokens: int) -> str:
    """The uniform grid's accuracy at `num_tokens` in the committed benchmark results, as text."""
    if not BENCHMARK_RESULTS.is_file():
        return "uniform grid: no benchmark results (run benchmarks/dart_vs_uniform.py)"
    rows = [r for r in json.loads(BENCHMARK_RESULTS.read_text()) if r["arm"] == "uniform" and r["tokens"] == num_tokens]
    if not rows:
        return f"uniform grid: no benchmark result at {num_tokens} tokens"
    mean = sum(r["accuracy"] for r in rows) / len(rows)
    return (f"the uniform grid reached {mean:.1%} at {num_tokens} tokens in benchmarks/dart_vs_uniform.py "
            f"(mean of {len(rows)} seeds; its own training loop)")


def finest_token_on_box(outputs, box: list[float], scale: float) -> bool:
    """Whether the smallest token's centre lies in the article's box (`scale`: input pixels per canvas pixel)."""
    regions = outputs.regions[0]
    areas = (regions[:, 2] - regions[:, 0]) * (regions[:, 3] - regions[:, 1])
    x0, y0, x1, y1 = regions[areas.argmin()].tolist()
    cx, cy = (x0 + x1) / 2 / scale, (y0 + y1) / 2 / scale
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def main(argv: list[str] | None = None) -> dict:
    start = time.time()
    user_args = list(sys.argv[1:] if argv is None else argv)
    preset = ["--preset", "quickstart"]
    _, data_args, training_args = runner.parse_args(preset + user_args)
    data_root = Path(training_args.output_dir).resolve().parent / "quickstart_data"
    explicit_data = any(arg.split("=")[0] in ("--train_dir", "--validation_dir") for arg in user_args)
    if not explicit_data:
        if training_args.should_save:  # the main process writes the canvases (deterministic: every process agrees)
            write_data(data_root, CANVASES)
        user_args = ["--train_dir", str(data_root / "train"), "--validation_dir", str(data_root / "validation"),
                     *user_args]
    data_seconds = time.time() - start
    if not any(arg.split("=")[0] == "--config_overrides" for arg in user_args):
        fields = {**runner.QUICKSTART_CONFIG, **QUICKSTART_DEMO_SCORER}
        user_args = ["--config_overrides", ",".join(f"{k}={v}" for k, v in fields.items()), *user_args]
    metrics = runner.main(preset + user_args)
    train_seconds = time.time() - start - data_seconds
    if not training_args.should_save:  # only the main process of a multi-process launch goes on
        return metrics

    import torch
    from PIL import Image, ImageDraw
    from transformers import pipeline

    import modeling_dart  # noqa: F401  (registers DART with the Auto classes)
    from modeling_dart.visualize import make_grid, render_token_regions

    torch.set_num_threads(min(2, torch.get_num_threads()))
    output_dir = Path(training_args.output_dir)
    # `modeling_dart` is imported, so its registered classes serve the folder (no remote code, no prompt)
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    root = Path(data_args.validation_dir).parent if explicit_data else data_root
    samples = pick_validation_images(root, 6) if (root / "boxes_validation.json").is_file() else []
    images = [Image.open(path).convert("RGB") for path, _, _ in samples]
    predictions = classifier(images, top_k=1)
    print("\npipeline('image-classification') on validation images:")
    correct = 0
    for (path, label, _), prediction in zip(samples, predictions):
        top = prediction[0]
        correct += top["label"] == label
        print(f"  {path.name:<22} true={label:<12} predicted={top['label']:<12} score={top['score']:.2f}")
    print(f"  {correct}/{len(samples)} correct")

    model, processor = classifier.model, classifier.image_processor
    display = 240
    regions, scores, on_article = [], [], 0
    for image, (_, _, box) in zip(images, samples):
        inputs = processor(image, return_tensors="pt")
        with torch.no_grad():
            outputs = model(**inputs)
        on_article += finest_token_on_box(outputs, box, inputs["pixel_values"].shape[-1] / image.width)
        for show_scores, pictures in ((False, regions), (True, scores)):
            picture = render_token_regions(model, processor, image, display_size=display, show_scores=show_scores,
                                           show_prediction=not show_scores)
            band = picture.height - display  # the caption band above the picture, if any
            x0, y0, x1, y1 = (c * display / image.width for c in box)
            ImageDraw.Draw(picture).rectangle([x0, y0 + band, x1, y1 + band], outline=(255, 255, 255))
            pictures.append(picture)
    picture_path = output_dir / "token_regions.png"
    make_grid(regions + scores, columns=len(images)).save(picture_path)
    accuracy = metrics.get("eval_accuracy", float("nan"))
    print(f"\ntoken regions: {picture_path} (article boxes in white); the finest token lies on the article in "
          f"{on_article}/{len(images)} images")
    print(f"validation accuracy: {accuracy:.1%} (10 classes, chance 10%); {uniform_figure(model.config.num_tokens)}")
    print(f"model folder: {output_dir}  (data {data_seconds:.0f} s, training + evaluation {train_seconds:.0f} s, "
          f"total {time.time() - start:.0f} s)")
    metrics["finest_token_on_article"] = on_article
    return metrics


if __name__ == "__main__":
    try:
        main()
    except runner.UsageError as error:
        sys.exit(runner.report_usage_error(error))
