#!/usr/bin/env python
"""Sparse-object canvases from real Fashion-MNIST articles: the setting where adaptive tokens can win.

Every canvas is a `canvas_size x canvas_size` RGB image (160 by default) with a textured background (random level,
gradient, colour cast and value noise at three scales) and ONE real Fashion-MNIST article, scaled to 28-42 pixels,
tinted with a colour that contrasts with the background and pasted at a random position. The article's bounding box
(its tight box of visible pixels) is recorded with it. A 28-42 pixel article covers 3-7% of a 160-pixel canvas: a
uniform grid of 16 tokens (40x40 pixels each) sees it at a fraction of its resolution, while tokens placed on it see
it whole.

`background="photo"` swaps the texture for a crop of a real photo (cluttered: edges, text, faces, foliage), so the
article is no longer the only thing that stands out. Each canvas takes one photo, a random square crop of it (a
side from half the canvas to the photo's shorter side), a random quarter turn and mirror, rescaled to the canvas; the
article's tint contrasts with the crop under it. The photos are the ones that install offline with the Python
packages (scikit-learn's `china.jpg` and `flower.jpg`, matplotlib's `grace_hopper.jpg`; `pip install scikit-learn`),
or every image of a folder given as `photo_dir` (to plug in one's own, e.g. held-out, photos). No photo is stored in
this repository.

The articles come from `fashion_mnist_articles.npz` beside this file (10,000 real Fashion-MNIST images: 800 per class
from the official training split and 200 per class from the official test split, so no article is in both of our
splits; Fashion-MNIST is Copyright 2017 Zalando SE, MIT licence). The canvases are generated on the fly: canvas `i` of
a split depends only on `(seed, split, i)`, so any subset is reproducible without the others.

    python examples/data/sparse_canvas.py build-articles            # rebuild the .npz from the Debian package
    python examples/data/sparse_canvas.py imagefolder OUT --train 200 --validation 100   # write an imagefolder tree
    python examples/data/sparse_canvas.py imagefolder OUT --background photo [--photo_dir DIR]  # cluttered canvases
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ARTICLES_FILE = HERE / "fashion_mnist_articles.npz"
DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian: apt-get install dataset-fashion-mnist
LABEL_NAMES = ("t_shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle_boot")
SPLITS = {"train": 0, "validation": 1}
CANVAS_SIZE = 160
ARTICLE_SIDES = (28, 42)  # the 28x28 article scaled by 1x-1.5x
BACKGROUNDS = ("texture", "photo")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


# ------------------------------------------------------------------------------------------------- the articles
def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (the MNIST format), gzipped or not."""
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def build_articles(source_dir: Path, output: Path, train_per_class: int = 800, validation_per_class: int = 200,
                   seed: int = 0) -> None:
    """Pick a class-balanced subset of Fashion-MNIST (train split -> train, test split -> validation) into `output`."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, prefix, per_class in (("train", "train", train_per_class), ("validation", "t10k", validation_per_class)):
        images = _read_idx(source_dir / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(source_dir / f"{prefix}-labels-idx1-ubyte.gz")
        chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                         for c in range(len(LABEL_NAMES))]))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[chosen], labels[chosen].astype(np.uint8)
    np.savez_compressed(output, label_names=np.array(LABEL_NAMES), **arrays)


def load_articles(split: str, path: Path = ARTICLES_FILE) -> tuple[np.ndarray, np.ndarray]:
    """`(images (n, 28, 28) uint8, labels (n,) int64)` of one split (`"train"` or `"validation"`)."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {tuple(SPLITS)}, got {split!r}.")
    with np.load(path) as data:
        return data[f"{split}_images"], data[f"{split}_labels"].astype(np.int64)


# ------------------------------------------------------------------------------------------------- the canvases
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a random `cells x cells` grid resized bicubically to `size x size`."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background `(size, size, 3)` float32 in [0, 255]: level, gradient, colour cast, noise at 3 scales."""
    level = rng.uniform(60.0, 190.0)
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    angle = rng.uniform(0.0, 2.0 * np.pi)
    grey = level + rng.uniform(10.0, 40.0) * (np.cos(angle) * gx + np.sin(angle) * gy)
    for cells, amplitude in ((4, (8.0, 20.0)), (12, (5.0, 14.0)), (40, (3.0, 9.0))):
        grey = grey + rng.uniform(*amplitude) * _value_noise(rng, size, cells)
    cast = rng.uniform(-12.0, 12.0, size=3).astype(np.float32)
    return np.clip(grey[:, :, None] + cast[None, None, :], 0.0, 255.0)


# ------------------------------------------------------------------------------------------------- photo backgrounds
def bundled_photo_paths() -> list[Path]:
    """The photos that install offline with Python packages: scikit-learn's two sample images and matplotlib's.

    Found on disk without importing either package. Raises `FileNotFoundError` naming what to install when
    scikit-learn's images are missing (matplotlib's one photo alone would give too little variety).
    """
    paths = []
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        images = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
        paths += [images / name for name in ("china.jpg", "flower.jpg") if (images / name).is_file()]
    if len(paths) < 2:
        raise FileNotFoundError("photo backgrounds need scikit-learn's sample images (`pip install scikit-learn`), "
                                "or pass `photo_dir`, a folder of your own photos")
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        hopper = Path(next(iter(spec.submodule_search_locations))) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            paths.append(hopper)
    return paths


def load_photos(photo_dir: str | Path | None = None) -> list[np.ndarray]:
    """RGB uint8 photos `(h, w, 3)`: every image file of `photo_dir` (sorted by name, not recursive), or the
    bundled ones (`bundled_photo_paths`) when `photo_dir` is None."""
    if photo_dir is None:
        paths = bundled_photo_paths()
    else:
        if not isinstance(photo_dir, (str, Path)):
            raise TypeError(f"`photo_dir` must be a path, got {type(photo_dir).__name__}.")
        folder = Path(photo_dir)
        if not folder.is_dir():
            raise ValueError(f"`photo_dir` {str(folder)!r} is not a folder.")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if not paths:
            raise ValueError(f"`photo_dir` {str(folder)!r} holds no image file ({', '.join(PHOTO_SUFFIXES)}).")
    photos = []
    for path in paths:
        with Image.open(path) as image:
            photos.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return photos


def make_photo_background(rng: np.random.Generator, size: int, photos: list[np.ndarray]) -> np.ndarray:
    """A crop of one of `photos` as a `(size, size, 3)` float32 background in [0, 255]: a square of side between
    `size / 2` and the photo's shorter side (or the shorter side, for a smaller photo), a random quarter turn and
    mirror, resized bilinearly (area-averaged when shrinking) to `size`."""
    photo = photos[int(rng.integers(len(photos)))]
    height, width = photo.shape[:2]
    shorter = min(height, width)
    side = int(rng.integers(min(shorter, size // 2), shorter + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = np.rot90(photo[top : top + side, left : left + side], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resample = Image.BOX if side > size else Image.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), resample)
    return np.asarray(resized, dtype=np.float32).copy()


def _contrasting_tint(rng: np.random.Generator, background_level: float) -> np.ndarray:
    """A colour whose brightness contrasts with the background: light on dark, dark on light."""
    value = rng.uniform(0.8, 1.0) if background_level < 128.0 else rng.uniform(0.0, 0.3)
    hue, saturation = rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.7)
    sector, fraction = int(hue * 6.0) % 6, hue * 6.0 - int(hue * 6.0)
    p, q, t = value * (1 - saturation), value * (1 - fraction * saturation), value * (1 - (1 - fraction) * saturation)
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][sector]
    return np.array(rgb, dtype=np.float32) * 255.0


def draw_background(rng: np.random.Generator, size: int, background: str = "texture",
                    photos: list[np.ndarray] | None = None) -> np.ndarray:
    """A fresh `(size, size, 3)` float32 background in [0, 255]: `make_background` for `"texture"`,
    `make_photo_background` on `photos` for `"photo"`."""
    if background not in BACKGROUNDS:
        raise ValueError(f"`background` must be one of {BACKGROUNDS}, got {background!r}.")
    if background == "photo":
        if not photos:
            raise ValueError("`photos` must hold at least one photo for `background='photo'`.")
        return make_photo_background(rng, size, photos)
    return make_background(rng, size)


def make_canvas(article: np.ndarray, rng: np.random.Generator, canvas_size: int = CANVAS_SIZE,
                sides: tuple[int, int] = ARTICLE_SIDES, background: str = "texture",
                photos: list[np.ndarray] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Paste one 28x28 article (bright on black, as in Fashion-MNIST) on a fresh canvas.

    `background`: `"texture"` (smooth synthetic texture; the tint contrasts with the whole canvas) or `"photo"` (a
    crop of one of `photos`, see `make_photo_background`; the tint contrasts with the crop under the article).
    Returns the canvas `(canvas_size, canvas_size, 3)` uint8 and the article's box `(x0, y0, x1, y1)` in pixels
    (the tight box of its visible pixels, alpha > 10%; `x1`, `y1` exclusive).
    """
    if canvas_size < sides[1]:
        raise ValueError(f"`canvas_size` ({canvas_size}) must be at least the largest article side ({sides[1]}).")
    canvas = draw_background(rng, canvas_size, background, photos)
    side = int(rng.integers(sides[0], sides[1] + 1))
    alpha = np.asarray(Image.fromarray(article, mode="L").resize((side, side), Image.BILINEAR), np.float32) / 255.0
    top, left = (int(v) for v in rng.integers(0, canvas_size - side + 1, size=2))
    region = canvas[top : top + side, left : left + side]
    tint = _contrasting_tint(rng, float((region if background == "photo" else canvas).mean()))
    canvas[top : top + side, left : left + side] = region * (1.0 - alpha[..., None]) + tint * alpha[..., None]
    rows, cols = np.flatnonzero((alpha > 0.1).any(axis=1)), np.flatnonzero((alpha > 0.1).any(axis=0))
    if len(rows) == 0:  # an empty article (none in the bundled file): the whole pasted square
        box = (left, top, left + side, top + side)
    else:
        box = (left + int(cols[0]), top + int(rows[0]), left + int(cols[-1]) + 1, top + int(rows[-1]) + 1)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), box


class SparseCanvases:
    """Canvases of one split, generated on demand: item `i` depends only on `(seed, split, i)`.

    Item `i` shows article `i % len(articles)` of the split (so `num_canvases` may exceed the articles: later
    passes place them anew). Indexing gives `(image uint8 (H, W, 3), label int, box (x0, y0, x1, y1))`.
    """

    def __init__(self, split: str, num_canvases: int | None = None, seed: int = 0, canvas_size: int = CANVAS_SIZE,
                 articles_file: Path = ARTICLES_FILE, background: str = "texture",
                 photo_dir: str | Path | None = None):
        if background not in BACKGROUNDS:
            raise ValueError(f"`background` must be one of {BACKGROUNDS}, got {background!r}.")
        if photo_dir is not None and background != "photo":
            raise ValueError("`photo_dir` is only read with `background='photo'`.")
        self.images, self.labels = load_articles(split, articles_file)
        self.split, self.seed, self.canvas_size = split, seed, canvas_size
        self.background = background
        self.photos = load_photos(photo_dir) if background == "photo" else None
        self.num_canvases = len(self.labels) if num_canvases is None else int(num_canvases)

    def __len__(self) -> int:
        return self.num_canvases

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_canvases:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        article = index % len(self.labels)
        image, box = make_canvas(self.images[article], rng, self.canvas_size, background=self.background,
                                 photos=self.photos)
        return image, int(self.labels[article]), box

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All canvases at once: images `(n, H, W, 3)` uint8, labels `(n,)` int64, boxes `(n, 4)` float32."""
        items = [self[i] for i in range(len(self))]
        return (np.stack([image for image, _, _ in items]), np.array([label for _, label, _ in items]),
                np.array([box for _, _, box in items], dtype=np.float32))


def write_imagefolder(output_dir: Path, counts: dict[str, int], seed: int = 0, canvas_size: int = CANVAS_SIZE,
                      quality: int = 92, background: str = "texture", photo_dir: str | Path | None = None) -> None:
    """Write `output_dir/<split>/<label name>/<label name>_<i>.jpg` plus `output_dir/boxes_<split>.json` (file ->
    box; outside the split folders, which then hold only images) for `counts = {"train": n, "validation": m}`: the
    first canvases of each split, in order. `background` / `photo_dir`: as in `SparseCanvases`."""
    output_dir = Path(output_dir)
    for split, count in counts.items():
        split_dir = output_dir / split
        shutil.rmtree(split_dir, ignore_errors=True)
        canvases = SparseCanvases(split, count, seed=seed, canvas_size=canvas_size, background=background,
                                  photo_dir=photo_dir)
        boxes = {}
        for index in range(count):
            image, label, box = canvases[index]
            name = LABEL_NAMES[label]
            relative = f"{name}/{name}_{index:05d}.jpg"
            (split_dir / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(split_dir / relative, quality=quality)
            boxes[relative] = list(box)
        (output_dir / f"boxes_{split}.json").write_text(json.dumps(boxes, indent=0, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-articles", help="rebuild the articles file from the Fashion-MNIST IDX files")
    build.add_argument("--source_dir", type=Path, default=DEFAULT_FASHION_DIR)
    build.add_argument("--output", type=Path, default=ARTICLES_FILE)
    folder = commands.add_parser("imagefolder", help="write canvases as an imagefolder tree")
    folder.add_argument("output_dir", type=Path)
    folder.add_argument("--train", type=int, default=200)
    folder.add_argument("--validation", type=int, default=100)
    folder.add_argument("--seed", type=int, default=0)
    folder.add_argument("--canvas_size", type=int, default=CANVAS_SIZE)
    folder.add_argument("--background", choices=BACKGROUNDS, default="texture",
                        help="smooth synthetic texture (default) or crops of real photos (cluttered)")
    folder.add_argument("--photo_dir", type=Path, default=None,
                        help="with --background photo: a folder of your own photos (default: the photos that come "
                             "with scikit-learn and matplotlib)")
    args = parser.parse_args(argv)
    if args.command == "build-articles":
        build_articles(args.source_dir, args.output)
        print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")
    else:
        if args.photo_dir is not None and args.background != "photo":
            parser.error("--photo_dir needs --background photo")
        write_imagefolder(args.output_dir, {"train": args.train, "validation": args.validation}, args.seed,
                          args.canvas_size, background=args.background, photo_dir=args.photo_dir)
        print(f"wrote {args.train} train + {args.validation} validation canvases to {args.output_dir}")


if __name__ == "__main__":
    main()
