"""Clips of one small Fashion-MNIST article moving over a static background: the setting where motion tokens can win.

A clip is `num_frames` RGB frames of `frame_size x frame_size` (8 frames of 96 pixels by default). The background is
drawn once per clip by the image canvases' generator (`sparse_canvas.draw_background`: a texture, or a photo crop
with `background="photo"`) and stays the same in every frame. One real Fashion-MNIST article, scaled to 20-28 pixels and
tinted with a colour that contrasts with the background (`sparse_canvas`'s rule), moves over it on a straight path
from a random start with a random velocity (each axis 2-6 pixels per frame, random sign), bouncing off the frame's
sides. The article's faint fringe (alpha at most 0.1) is dropped, so outside the article's box every pixel of a frame
is the background's. The label is the article's class.

Clip `i` of a split depends only on `(seed, split, i)` and shows article `i % len(articles)` of that split
(`sparse_canvas.load_articles`: train and validation articles come from Fashion-MNIST's own train and test splits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sparse_canvas import (
    ARTICLES_FILE,
    SPLITS,
    SparseCanvases,
    _contrasting_tint,
    draw_background,
)

FRAME_SIZE = 96
NUM_FRAMES = 8
ARTICLE_SIDES = (20, 28)  # the 28x28 article scaled by 0.7x-1x
SPEEDS = (2.0, 6.0)  # pixels per frame along each axis
ALPHA_FLOOR = 0.1  # alpha at or below this is dropped: the box then bounds every changed pixel


def bounce(start: float, velocity: float, steps: int, span: float) -> np.ndarray:
    """Positions `start + velocity * t` for `t = 0..steps-1`, reflected off 0 and `span` (a triangle wave):
    `(steps,)` float64 in `[0, span]`. `span = 0` keeps the position at 0."""
    if span <= 0:
        return np.zeros(steps)
    travelled = np.mod(start + velocity * np.arange(steps), 2.0 * span)
    return np.where(travelled > span, 2.0 * span - travelled, travelled)


def make_clip(article: np.ndarray, rng: np.random.Generator, num_frames: int = NUM_FRAMES,
              frame_size: int = FRAME_SIZE, sides: tuple[int, int] = ARTICLE_SIDES, background: str = "texture",
              photos: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One clip of a 28x28 article (bright on black, as in Fashion-MNIST) moving over a static background.

    Returns the frames `(num_frames, frame_size, frame_size, 3)` uint8 and the article's box in every frame
    `(num_frames, 4)` int64 `(x0, y0, x1, y1)` in pixels (`x1`, `y1` exclusive): the tight box of the article's
    pixels with alpha above `ALPHA_FLOOR`, the only pixels that differ from the background.
    """
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be at least 1, got {num_frames}.")
    if frame_size < sides[1]:
        raise ValueError(f"`frame_size` ({frame_size}) must be at least the largest article side ({sides[1]}).")
    canvas = draw_background(rng, frame_size, background, photos)
    side = int(rng.integers(sides[0], sides[1] + 1))
    alpha = np.asarray(Image.fromarray(article, mode="L").resize((side, side), Image.BILINEAR), np.float32) / 255.0
    alpha = np.where(alpha > ALPHA_FLOOR, alpha, 0.0).astype(np.float32)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if len(rows) == 0:  # an empty article (none in the bundled file): the whole square
        rows, cols = np.array([0, side - 1]), np.array([0, side - 1])
    span = frame_size - side
    start = rng.uniform(0.0, span, size=2)
    velocity = rng.uniform(*SPEEDS, size=2) * rng.choice([-1.0, 1.0], size=2)
    lefts = np.rint(bounce(start[0], velocity[0], num_frames, span)).astype(np.int64)
    tops = np.rint(bounce(start[1], velocity[1], num_frames, span)).astype(np.int64)
    # the tint contrasts with the background along the whole path (the photo crop under it, or the texture)
    under = [canvas[top : top + side, left : left + side] for top, left in zip(tops, lefts)]
    level = float(np.mean(under)) if background == "photo" else float(canvas.mean())
    tint = _contrasting_tint(rng, level)
    frames = np.repeat(canvas[None], num_frames, axis=0)
    for frame, region, top, left in zip(frames, under, tops, lefts):
        frame[top : top + side, left : left + side] = region * (1.0 - alpha[..., None]) + tint * alpha[..., None]
    boxes = np.stack([lefts + cols[0], tops + rows[0], lefts + cols[-1] + 1, tops + rows[-1] + 1], axis=1)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8), boxes


class MovingCanvases(SparseCanvases):
    """Clips of one split, generated on demand: item `i` depends only on `(seed, split, i)`.

    Indexing gives `(frames uint8 (T, H, W, 3), label int, boxes int64 (T, 4))`; `arrays()` gives all clips at once:
    frames `(n, T, H, W, 3)` uint8, labels `(n,)` int64, boxes `(n, T, 4)` float32. `background` / `photo_dir` as in
    `sparse_canvas.SparseCanvases` (whose `canvas_size` is the frame size here).
    """

    def __init__(self, split: str, num_clips: int | None = None, seed: int = 0, frame_size: int = FRAME_SIZE,
                 num_frames: int = NUM_FRAMES, articles_file: Path = ARTICLES_FILE, background: str = "texture",
                 photo_dir: str | Path | None = None):
        super().__init__(split, num_clips, seed=seed, canvas_size=frame_size, articles_file=articles_file,
                         background=background, photo_dir=photo_dir)
        self.num_frames = num_frames

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        article = index % len(self.labels)
        frames, boxes = make_clip(self.images[article], rng, self.num_frames, self.canvas_size,
                                  background=self.background, photos=self.photos)
        return frames, int(self.labels[article]), boxes
