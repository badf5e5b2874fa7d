"""The sparse-object canvases (deterministic, boxes that fit the article, disjoint splits), the benchmark's oracle
map, and the benchmark's `--quick` path."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "examples" / "data"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import sparse_canvas  # noqa: E402


def test_canvases_are_deterministic_per_seed_split_and_index():
    a = sparse_canvas.SparseCanvases("train", 50, seed=3)
    b = sparse_canvas.SparseCanvases("train", 10, seed=3)  # a shorter split holds the same first canvases
    for i in (0, 7):
        image_a, label_a, box_a = a[i]
        image_b, label_b, box_b = b[i]
        assert np.array_equal(image_a, image_b) and label_a == label_b and box_a == box_b
    assert not np.array_equal(a[0][0], sparse_canvas.SparseCanvases("train", 1, seed=4)[0][0])
    assert not np.array_equal(a[0][0], sparse_canvas.SparseCanvases("validation", 1, seed=3)[0][0])
    assert a[0][0].shape == (160, 160, 3) and a[0][0].dtype == np.uint8
    with pytest.raises(IndexError):
        a[50]


@pytest.mark.parametrize("index", range(6))
def test_the_box_is_the_tight_box_of_the_pasted_article(index):
    """Rebuild the background from the same random stream: every changed pixel lies in the box, the box is tight."""
    canvases = sparse_canvas.SparseCanvases("validation", 10, seed=0)
    image, _, (x0, y0, x1, y1) = canvases[index]
    rng = np.random.default_rng([0, 1, index])
    background = np.clip(np.rint(sparse_canvas.make_background(rng, 160)), 0, 255).astype(np.uint8)
    changed = np.abs(image.astype(int) - background.astype(int)).max(axis=2) > 25
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    assert y0 <= rows[0] and rows[-1] < y1 and x0 <= cols[0] and cols[-1] < x1
    assert abs(rows[0] - y0) <= 2 and abs(rows[-1] + 1 - y1) <= 2  # tight (alpha > 10% vs a 25-level change)
    assert abs(cols[0] - x0) <= 2 and abs(cols[-1] + 1 - x1) <= 2
    assert 4 <= x1 - x0 <= 42 and 8 <= y1 - y0 <= 42


def test_the_bundled_articles_are_real_balanced_and_the_splits_disjoint():
    train_images, train_labels = sparse_canvas.load_articles("train")
    val_images, val_labels = sparse_canvas.load_articles("validation")
    assert train_images.shape == (8000, 28, 28) and val_images.shape == (2000, 28, 28)
    assert np.bincount(train_labels).tolist() == [800] * 10 and np.bincount(val_labels).tolist() == [200] * 10
    train_set = {image.tobytes() for image in train_images}
    assert not any(image.tobytes() in train_set for image in val_images)
    assert train_images.mean() > 40 and (train_images.reshape(8000, -1).std(axis=1) > 5).all()  # not blank


def test_oracle_map_covers_the_box():
    import dart_vs_uniform as benchmark

    boxes = torch.tensor([[16.0, 32.0, 48.0, 56.0], [3.0, 5.0, 31.0, 45.0]])
    coverage = benchmark.box_coverage(boxes, grid=10)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    torch.testing.assert_close(coverage.sum(dim=(1, 2)) * 16 * 16, areas)
    assert coverage[0, 2:3, 1:3].eq(1).all() and coverage[0, 3, 1:3].eq(0.5).all()  # y 32-56: row 2 whole, 3 half
    assert coverage[0, :, 0].eq(0).all() and coverage[0, :2].eq(0).all()
    scores = benchmark.oracle_scores(boxes, max_ratio=1e4, grid=10).flatten(1)
    pdf = scores / scores.sum(-1, keepdim=True)
    share = (pdf * coverage.flatten(1)).sum(-1)
    assert (share > 0.5).all()
    assert (scores.max(-1).values / scores.min(-1).values <= 1e4 * (1 + 1e-6)).all()


def test_benchmark_quick_path_runs(tmp_path):
    pytest.importorskip("matplotlib")
    import dart_vs_uniform as benchmark

    from tests.test_trunks import lite0_file

    lite0_file()  # the pretrained arm needs the `pretrained` extra (skip, or fail under CI=true)
    results_path, plot_path = tmp_path / "results.json", tmp_path / "plot.png"
    results = benchmark.main([
        "--quick", "--steps", "4", "--batch_size", "8", "--train_canvases", "32", "--validation_canvases", "16",
        "--tokens", "16", "36", "--results", str(results_path), "--plot", str(plot_path),
    ])
    assert json.loads(results_path.read_text()) == results
    assert {(r["arm"], r["tokens"]) for r in results} == {(a, n) for a in benchmark.ARMS for n in (16, 36)}
    for row in results:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 < row["box_share"] < 1.0
    # the uniform grid's share of the density inside the box is the box's share of the canvas
    _, _, boxes = sparse_canvas.SparseCanvases("validation", 16, seed=0).arrays()
    area_share = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 160**2).mean()
    uniform = next(r for r in results if r["arm"] == "uniform")
    assert uniform["box_share"] == pytest.approx(area_share, rel=1e-4)
    oracle = next(r for r in results if r["arm"] == "oracle")
    assert oracle["box_share"] > 0.4
    assert plot_path.stat().st_size > 10_000


def test_benchmark_original_heads_arms_run():
    """The v1 / v2 comparison arms score from the same cached trunk features as the saliency head."""
    import dart_vs_uniform as benchmark

    from tests.test_trunks import lite0_file

    lite0_file()
    results = benchmark.main([
        "--quick", "--steps", "2", "--batch_size", "8", "--train_canvases", "16", "--validation_canvases", "8",
        "--arms", "pretrained_v1", "pretrained_v2", "pretrained",
    ])
    assert [r["arm"] for r in results] == ["pretrained_v1", "pretrained_v2", "pretrained"]
    v1, v2, saliency = (r["box_share_at_start"] for r in results)
    assert 0.0 < v1 < saliency and 0.0 < v2 < saliency  # the original heads' narrow range caps the share
