#!/usr/bin/env python
"""DART quick start: train a small DART classifier on the bundled data, use it, and look at its tokens.

    python examples/quickstart.py            # a few minutes on 2 CPU cores

1. trains a small from-scratch DART-DeiT on `examples/data/sparse_fashion` (1200 train / 300 validation images of
   Fashion-MNIST articles placed on textured 96x96 backgrounds) with `run_image_classification.py --preset quickstart`,
   and prints the validation accuracy (chance: 10%);
2. reloads the saved folder with `pipeline("image-classification", model=folder)` and classifies a few validation
   images;
3. draws where the tokens went for those images (fine tokens on the article, coarse ones on the background) into
   `outputs/quickstart/token_regions.png` (top row: token regions; bottom row: the same over the score map).

Any argument of `run_image_classification.py` can be added to override the preset, e.g.
`python examples/quickstart.py --num_train_epochs 5 --output_dir outputs/qs5`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES_DIR))

import run_image_classification as runner


def pick_validation_images(validation_dir: Path, count: int) -> list[tuple[Path, str]]:
    """The first image of each of the first `count` classes (folder names are the labels)."""
    chosen = []
    for class_dir in sorted(p for p in validation_dir.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.png")) + sorted(class_dir.glob("*.jpg"))
        if files:
            chosen.append((files[0], class_dir.name))
        if len(chosen) == count:
            break
    return chosen


def main(argv: list[str] | None = None) -> dict:
    start = time.time()
    args = ["--preset", "quickstart", *(sys.argv[1:] if argv is None else argv)]
    metrics = runner.main(args)
    train_seconds = time.time() - start

    _, data_args, training_args = runner.parse_args(args)
    if not training_args.should_save:  # only the main process of a multi-process launch goes on
        return metrics
    output_dir = Path(training_args.output_dir)

    import torch
    from PIL import Image
    from transformers import pipeline

    import modeling_dart  # noqa: F401  (registers DART with the Auto classes)
    from modeling_dart.visualize import make_grid, render_token_regions

    torch.set_num_threads(min(2, torch.get_num_threads()))
    # `modeling_dart` is imported, so its registered classes serve the folder (no remote code, no prompt)
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    samples = pick_validation_images(Path(data_args.validation_dir), 6)
    images = [Image.open(path).convert("RGB") for path, _ in samples]
    predictions = classifier(images, top_k=1)
    print("\npipeline('image-classification') on validation images:")
    correct = 0
    for (path, label), prediction in zip(samples, predictions):
        top = prediction[0]
        correct += top["label"] == label
        print(f"  {path.name:<24} true={label:<12} predicted={top['label']:<12} score={top['score']:.2f}")
    print(f"  {correct}/{len(samples)} correct")

    model, processor = classifier.model, classifier.image_processor
    regions = [render_token_regions(model, processor, image, display_size=240) for image in images]
    scores = [render_token_regions(model, processor, image, display_size=240, show_scores=True,
                                   show_prediction=False) for image in images]
    picture_path = output_dir / "token_regions.png"
    make_grid(regions + scores, columns=len(images)).save(picture_path)
    print(f"\ntoken regions: {picture_path}")
    print(f"validation accuracy: {metrics.get('eval_accuracy', float('nan')):.1%} (chance 10%)")
    print(f"model folder: {output_dir}  (training + evaluation {train_seconds:.0f} s, total {time.time() - start:.0f} s)")
    return metrics


if __name__ == "__main__":
    main()
