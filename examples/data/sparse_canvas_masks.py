#!/usr/bin/env python
"""Per-pixel masks for the sparse-object canvases of `sparse_canvas.py`: the same canvases, for semantic segmentation.

Canvas `i` of a split is exactly the canvas `SparseCanvases(split, seed=seed, canvas_size=...)[i]` (the same image,
article and box); its mask gives every pixel a class id:

- `0`: background;
- `1 + label` (`1`..`10`): the article's pixels, `label` being its Fashion-MNIST class in the official order
  (`1` = t_shirt_top, ..., `10` = ankle_boot; `ID2LABEL`).

The article's pixels are those where its alpha is above 0.1, the threshold of the recorded box: the mask's article
pixels have exactly that box as their tight box. No pixel is left unlabelled (none is 255).

`make_canvas` does not return the article's alpha, so it is re-derived through the public functions: the same seeded
generator drawn by `make_canvas` with an empty (all-zero) article gives the pasted square's position and side (its
box is then the whole square, and every draw but the alpha's is the same), and the article resized as `make_canvas`
resizes it gives the alpha.

    python examples/data/sparse_canvas_masks.py OUT --train 32 --validation 16 --canvas_size 128
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from sparse_canvas import (  # beside this file
    ARTICLE_SIDES,
    LABEL_NAMES,
    SPLITS,
    SparseCanvases,
    make_canvas,
)

BACKGROUND_ID = 0
ARTICLE_ALPHA = 0.1  # above: the article's class (the threshold of the box that make_canvas records)
ID2LABEL = {BACKGROUND_ID: "background", **{1 + i: name for i, name in enumerate(LABEL_NAMES)}}


def article_mask(article: np.ndarray, rng_seed: list[int], canvas_size: int, label: int, background: str = "texture",
                 photos: list[np.ndarray] | None = None) -> np.ndarray:
    """The `(canvas_size, canvas_size)` uint8 mask of the canvas that `make_canvas(article,
    np.random.default_rng(rng_seed), canvas_size, ...)` makes: `1 + label` where the article's alpha is above 0.1,
    0 elsewhere."""
    empty = np.zeros_like(article)
    _, (left, top, right, bottom) = make_canvas(empty, np.random.default_rng(rng_seed), canvas_size,
                                                background=background, photos=photos)
    side = right - left
    if side != bottom - top or not ARTICLE_SIDES[0] <= side <= ARTICLE_SIDES[1]:
        raise RuntimeError(f"the pasted square could not be re-derived (got box {(left, top, right, bottom)}); "
                           "sparse_canvas.make_canvas has changed its draws")
    alpha = np.asarray(Image.fromarray(article, mode="L").resize((side, side), Image.BILINEAR), np.float32) / 255.0
    mask = np.zeros((canvas_size, canvas_size), dtype=np.uint8)
    square = mask[top:bottom, left:right]
    square[alpha > ARTICLE_ALPHA] = 1 + label
    return mask


class SegmentationCanvases(SparseCanvases):
    """`SparseCanvases` with masks: item `i` is `(image uint8 (H, W, 3), mask uint8 (H, W), label, box)`, the image,
    label and box being those of `SparseCanvases` item `i`."""

    def __getitem__(self, index: int):
        image, label, box = super().__getitem__(index)
        article = self.images[index % len(self.labels)]
        mask = article_mask(article, [self.seed, SPLITS[self.split], index], self.canvas_size, label,
                            background=self.background, photos=self.photos)
        return image, mask, label, box


def write_pairs(output_dir: Path, counts: dict[str, int], seed: int = 0, canvas_size: int = 128,
                quality: int = 92) -> None:
    """Write `output_dir/<split>/images/canvas_<i>.jpg` and `output_dir/<split>/masks/canvas_<i>.png` (mode L, the
    ids above) for the first `counts[split]` canvases of each split, plus `output_dir/id2label.json`."""
    output_dir = Path(output_dir)
    for split, count in counts.items():
        shutil.rmtree(output_dir / split, ignore_errors=True)
        (output_dir / split / "images").mkdir(parents=True)
        (output_dir / split / "masks").mkdir(parents=True)
        canvases = SegmentationCanvases(split, count, seed=seed, canvas_size=canvas_size)
        for index in range(count):
            image, mask, _, _ = canvases[index]
            Image.fromarray(image).save(output_dir / split / "images" / f"canvas_{index:05d}.jpg", quality=quality)
            Image.fromarray(mask, mode="L").save(output_dir / split / "masks" / f"canvas_{index:05d}.png")
    (output_dir / "id2label.json").write_text(json.dumps({str(k): v for k, v in ID2LABEL.items()}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--validation", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--canvas_size", type=int, default=128)
    args = parser.parse_args(argv)
    for name in ("train", "validation"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.canvas_size < ARTICLE_SIDES[1]:
        parser.error(f"--canvas_size must be at least {ARTICLE_SIDES[1]}")
    write_pairs(args.output_dir, {"train": args.train, "validation": args.validation}, args.seed, args.canvas_size)
    print(f"wrote {args.train} train + {args.validation} validation image/mask pairs to {args.output_dir}")


if __name__ == "__main__":
    main()
