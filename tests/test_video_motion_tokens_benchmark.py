"""The motion-tokens video benchmark (#27.4): the moving-article clips, the token share on the article against
hand-counted layouts, and a tiny end-to-end run of the script."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
sys.path.insert(0, str(REPO_ROOT / "examples" / "data"))

import moving_canvas
import video_motion_tokens as bench


def test_clips_are_deterministic_given_the_seed():
    first = moving_canvas.MovingCanvases("validation", 4, seed=3)
    again = moving_canvas.MovingCanvases("validation", 4, seed=3)
    other = moving_canvas.MovingCanvases("validation", 4, seed=4)
    for index in (0, 3):
        frames, label, boxes = first[index]
        frames_again, label_again, boxes_again = again[index]
        np.testing.assert_array_equal(frames, frames_again)
        np.testing.assert_array_equal(boxes, boxes_again)
        assert label == label_again
        assert not np.array_equal(frames, other[index][0])
    assert frames.shape == (8, 96, 96, 3) and frames.dtype == np.uint8 and boxes.shape == (8, 4)


def test_the_article_moves_over_a_static_background():
    clips = moving_canvas.MovingCanvases("train", 12, seed=0)
    for index in range(len(clips)):
        frames, _, boxes = clips[index]
        sides = boxes[:, 2:] - boxes[:, :2]
        assert (sides == sides[0]).all() and (sides > 0).all()  # one article, same size in every frame
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 96).all()
        # it moves: no two consecutive frames show it at the same place
        assert (np.abs(np.diff(boxes[:, :2], axis=0)).sum(axis=1) > 0).all()
        # outside the article's box of both frames, frame t is frame 0 pixel for pixel
        for t in range(1, 8):
            outside = np.ones((96, 96), dtype=bool)
            for x0, y0, x1, y1 in (boxes[0], boxes[t]):
                outside[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(frames[t][outside], frames[0][outside])
            # and the article is really there: its box differs from the background seen in frame 0
            x0, y0, x1, y1 = boxes[t]
            if not (x0 < boxes[0][2] and boxes[0][0] < x1 and y0 < boxes[0][3] and boxes[0][1] < y1):
                assert (frames[t][y0:y1, x0:x1] != frames[0][y0:y1, x0:x1]).any()


def test_bounce_reflects_off_both_sides():
    np.testing.assert_allclose(moving_canvas.bounce(8.0, 3.0, 5, 10.0), [8.0, 9.0, 6.0, 3.0, 0.0])
    np.testing.assert_allclose(moving_canvas.bounce(1.0, -2.0, 3, 10.0), [1.0, 1.0, 3.0])


def test_token_share_of_per_frame_tokens_counted_by_hand():
    # 2 frames of 2 tokens; article box x 0-10, y 0-10 in frame 0 and x 10-20, y 0-10 in frame 1
    regions = torch.tensor([[[[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]],  # centres (5, 5) in, (15, 5) out
                             [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]]]])  # (5, 5) out, (15, 5) in
    article = torch.tensor([[[0, 0, 10, 10], [10, 0, 20, 10]]])
    frames, boxes = bench.tokens_per_frame_boxes(regions, None, 20)
    assert frames.tolist() == [[0, 0, 1, 1]]
    assert bench.token_share(frames, boxes, article).tolist() == [0.5]
    # a box that holds the left token's centre on its left side only: (5, 5) in [5, 6), (15, 5) not
    edge = torch.tensor([[[5, 5, 6, 6], [20, 20, 21, 21]]])
    assert bench.token_share(frames, boxes, edge).tolist() == [0.25]


def test_token_share_of_motion_tokens_counted_by_hand():
    # frames of height 20 stacked: frame 1 is rows 20-39 of the tall image
    regions = torch.tensor([[[0.0, 0.0, 10.0, 10.0],    # frame 0, centre (5, 5): in frame 0's box
                             [0.0, 20.0, 10.0, 30.0],   # frame 1, centre (5, 5): not in frame 1's box
                             [10.0, 20.0, 20.0, 30.0],  # frame 1, centre (15, 5): in frame 1's box
                             [0.0, 30.0, 20.0, 40.0]]])  # frame 1, centre (10, 15): not
    token_frames = torch.tensor([[0, 1, 1, 1]])
    article = torch.tensor([[[0, 0, 10, 10], [10, 0, 20, 10]]])
    frames, boxes = bench.tokens_per_frame_boxes(regions, token_frames, 20)
    torch.testing.assert_close(boxes[0, 2], torch.tensor([10.0, 0.0, 20.0, 10.0]))
    assert bench.token_share(frames, boxes, article).tolist() == [0.5]


def test_tiny_run_writes_results_and_pictures(tmp_path):
    from tests.test_trunks import lite0_file

    lite0_file()  # the learned arms need the `pretrained` extra (skip, or fail under CI=true)
    paths = {name: tmp_path / name for name in ("r.json", "plot.png", "clip.png")}
    results = bench.main(["--tokens", "4", "9", "--seeds", "0", "--steps", "2", "--train_clips", "4",
                          "--validation_clips", "2", "--batch_size", "2", "--hidden_size", "16",
                          "--results", str(paths["r.json"]), "--plot", str(paths["plot.png"]),
                          "--pictures", str(paths["clip.png"])])
    written = json.loads(paths["r.json"].read_text())
    assert [(r["arm"], r["tokens"]) for r in written["runs"]] == [(arm, n) for n in (32, 72) for arm in bench.ARMS]
    assert len(results) == 8
    for run in written["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["token_share"] <= 1.0
    uniform = next(r for r in written["runs"] if r["arm"] == "uniform" and r["tokens"] == 32)
    oracle = next(r for r in written["runs"] if r["arm"] == "oracle" and r["tokens"] == 32)
    assert oracle["token_share"] > uniform["token_share"]
    with Image.open(paths["clip.png"]) as picture:  # 4 arms x 8 frames of 192 px (+ title band and padding)
        assert picture.width > 8 * 192 and 4 * 192 < picture.height < 5 * 192
    with Image.open(paths["plot.png"]) as plot:
        assert plot.width > 0


@pytest.mark.parametrize("bad", [["--tokens", "0"], ["--tokens", "145"], ["--background", "texture", "--photo_dir",
                                                                             "x"]])
def test_bad_flags_are_refused(bad):
    with pytest.raises(SystemExit):
        bench.main(bad)
