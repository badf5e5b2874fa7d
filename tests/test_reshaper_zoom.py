"""The reshaper-zoom benchmark (#25.7): the box area share on hand-made warps with known answers, against the pixels
of a real warp, the cached fixed warps against the model's own reshaper, and a tiny `--quick`-style run."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import reshaper_zoom as zoom


def test_axis_share_of_hand_made_edges():
    # bands [0, 10), [10, 20), [20, 40); the box's rows [5, 15) fill half of the first two bands, none of the third
    edges = torch.tensor([[0.0, 10.0, 20.0, 40.0]], dtype=torch.float64)
    share = zoom.axis_share(edges, torch.tensor([5]), torch.tensor([15]))
    assert share.item() == pytest.approx(1 / 3)
    # [10, 40) covers the last two bands whole
    assert zoom.axis_share(edges, torch.tensor([10]), torch.tensor([40])).item() == pytest.approx(2 / 3)
    # a band of zero height counts as inside when its edge is: [0, 10), [10, 10), [10, 20)
    pinched = torch.tensor([[0.0, 10.0, 10.0, 20.0]], dtype=torch.float64)
    assert zoom.axis_share(pinched, torch.tensor([10]), torch.tensor([20])).item() == pytest.approx(2 / 3)
    assert zoom.axis_share(pinched, torch.tensor([0]), torch.tensor([10])).item() == pytest.approx(1 / 3)


def test_box_area_share_is_the_product_of_the_axes():
    # the plain resize's edges (16 bands of 20 px on 320): the share is the box's share of the canvas
    uniform = (torch.arange(17, dtype=torch.float64) * 20).expand(2, -1)
    boxes = torch.tensor([[40, 80, 72, 112], [0, 0, 320, 160]])  # 32 x 32 px; the top half
    shares = zoom.box_area_share(uniform, uniform, boxes)
    torch.testing.assert_close(shares, torch.tensor([0.01, 0.5], dtype=torch.float64))
    # a zoom: rows [0, 10), [10, 20), [20, 40) and columns [0, 20), [20, 30), [30, 40); box x 20-30, y 0-20
    rows = torch.tensor([[0.0, 10.0, 20.0, 40.0]], dtype=torch.float64)
    cols = torch.tensor([[0.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    share = zoom.box_area_share(rows, cols, torch.tensor([[20, 0, 30, 20]]))
    assert share.item() == pytest.approx((2 / 3) * (1 / 3))


@torch.no_grad()
def test_box_area_share_matches_the_warped_pixels():
    """A white box on black, warped by the oracle: the share of bright warped pixels is the computed share (up to the
    linearly interpolated edge rows and columns)."""
    args = zoom.build_parser().parse_args([])
    reshaper = zoom.build_model("oracle", "convnext", args, None).reshaper.eval()
    boxes = torch.tensor([[100, 60, 136, 92], [250, 10, 280, 52]])
    images = torch.zeros(2, 3, zoom.CANVAS, zoom.CANVAS)
    for image, (x0, y0, x1, y1) in zip(images, boxes.tolist()):
        image[:, y0:y1, x0:x1] = 1.0
    warp = reshaper(images, score_map=zoom.oracle_scores(boxes, args.max_ratio))
    bright = (warp.warped_pixel_values[:, 0] > 0.5).flatten(1).float().mean(-1).double()
    share = zoom.box_area_share(warp.row_edges, warp.col_edges, boxes)
    assert (share > 0.3).all()  # the oracle zooms: far above the boxes' 1.1% and 1.2% of the canvas
    torch.testing.assert_close(share.double(), bright, atol=0.01, rtol=0)


@torch.no_grad()
def test_fixed_warps_are_the_models_own():
    args = zoom.build_parser().parse_args([])
    images = torch.randint(0, 256, (3, 3, zoom.CANVAS, zoom.CANVAS), dtype=torch.uint8)
    boxes = torch.tensor([[10, 20, 40, 60], [200, 200, 242, 230], [150, 0, 180, 28]])
    for arm in ("uniform", "oracle"):
        warped, shares = zoom.fixed_warps(arm, images, boxes, args, batch=2)
        model = zoom.build_model(arm, "rmt", args, None).eval()
        scores = None if arm == "uniform" else zoom.oracle_scores(boxes, args.max_ratio)
        warp = model.reshaper(zoom.base.normalize(images), score_map=scores)
        assert warped.shape == (3, 3, zoom.WARPED, zoom.WARPED) and warped.dtype == torch.float16
        torch.testing.assert_close(warped.float(), warp.warped_pixel_values, atol=2e-3, rtol=0)
        torch.testing.assert_close(shares, zoom.box_area_share(warp.row_edges, warp.col_edges, boxes))
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / zoom.CANVAS**2
    torch.testing.assert_close(zoom.fixed_warps("uniform", images, boxes, args)[1].double(), areas)


def test_quick_path_runs(tmp_path):
    """The full run's path: forked workers (the serial path runs the same tasks in the parent)."""
    pytest.importorskip("matplotlib")
    from tests.test_trunks import lite0_file

    lite0_file()  # the pretrained arm needs the `pretrained` extra (skip, or fail under CI=true)
    paths = {name: tmp_path / name for name in ("results.json", "plot.png", "warps.png")}
    results = zoom.main([
        "--quick", "--steps", "2", "--batch_size", "4", "--train_canvases", "8", "--validation_canvases", "6",
        "--workers", "2", "--results", str(paths["results.json"]), "--plot", str(paths["plot.png"]),
        "--pictures", str(paths["warps.png"]),
    ])
    assert json.loads(paths["results.json"].read_text()) == results
    assert [(r["arm"], r["backbone"]) for r in results] == [(a, b) for b in zoom.BACKBONES for a in zoom.ARMS]
    for row in results:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["box_area_share"] < 1.0
    # the plain resize shows each box on its share of the canvas
    _, _, boxes = zoom.base.load_split("validation", 6, 0, canvas_size=zoom.CANVAS)
    area = (((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / 320**2).mean().item()
    for row in results:
        if row["arm"] == "uniform":
            assert row["box_area_share"] == pytest.approx(area, rel=1e-6)
            assert row["box_area_share_at_start"] == pytest.approx(area, rel=1e-6)
        else:
            assert row["box_area_share_at_start"] > 5 * area  # both warps zoom from the start
    assert paths["plot.png"].stat().st_size > 10_000 and paths["warps.png"].stat().st_size > 10_000
