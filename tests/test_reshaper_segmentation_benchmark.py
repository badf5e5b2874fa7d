"""The reshaper segmentation benchmark (#26.5): its mIoU on a hand-made case, the oracle's zoom against the plain
resize on a real canvas, and a tiny end-to-end run writing its JSON and PNGs."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import reshaper_segmentation as seg


def test_mean_iou_of_a_hand_made_case():
    # 3 classes on a 2x4 target and its prediction, counted by hand:
    #   target      0 0 1 1     prediction  0 1 1 1
    #               0 0 2 255               0 0 1 2    (255: ignored, whatever is predicted there)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 2]]])
    confusion = seg.confusion_matrix(prediction, target, num_classes=3)
    # target 0 -> predicted 0 three times, 1 once; target 1 -> 1 twice; target 2 -> 1 once
    assert confusion.tolist() == [[3, 1, 0], [0, 2, 0], [0, 1, 0]]
    # IoU 0: 3 / (4 + 3 - 3) = 3/4; class 1: 2 / (2 + 4 - 2) = 1/2; class 2: 0 / (1 + 0 - 0) = 0
    assert seg.mean_iou(confusion) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert seg.mean_iou(confusion, classes=[1, 2]) == pytest.approx((1 / 2 + 0) / 2)
    # article (1 or 2) against background: target articles at 3 pixels, predicted at 4 (the ignored one left out),
    # 3 of them shared
    assert seg.foreground_iou(confusion) == pytest.approx(3 / 4)
    # a class neither in the target nor predicted is left out of the mean, not counted as 0 or 1
    four = seg.confusion_matrix(prediction, target, num_classes=4)
    assert seg.mean_iou(four) == pytest.approx((3 / 4 + 1 / 2 + 0) / 3)
    assert seg.mean_iou(four, classes=[3]) != seg.mean_iou(four, classes=[3])  # NaN: nothing to average
    # pooled over images: the counts add up before the ratio (not a mean of per-image IoUs)
    pooled = seg.confusion_matrix(torch.tensor([[[1, 1]], [[0, 0]]]), torch.tensor([[[1, 0]], [[0, 0]]]),
                                  num_classes=2)
    assert seg.mean_iou(pooled) == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_confusion_matrix_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        seg.confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        seg.confusion_matrix(torch.zeros(1, 1, 2, dtype=torch.long), torch.tensor([[[0, 11]]]))


def test_the_background_weight_weighs_the_cross_entropy_by_hand():
    assert seg.class_weights(SimpleNamespace(background_weight=1.0)) is None  # the model's own loss
    weights = seg.class_weights(SimpleNamespace(background_weight=0.25))
    assert weights.tolist() == [0.25] + [1.0] * 10
    with pytest.raises(ValueError, match="background_weight"):
        seg.main(["--background_weight", "0"])
    # three pixels on a 1x3 map, 3 classes: background (logits 0, 0, 0), class 2 (logits 0, 0, ln 2), one ignored
    logits = torch.zeros(1, 3, 1, 3)
    logits[0, :, 0, 1] = torch.tensor([1.0, 1.0, 2.0]).log()
    logits[0, :, 0, 2] = torch.tensor([9.0, -9.0, 0.0])
    labels = torch.tensor([[[0, 2, 255]]])
    # -log p: background 1/3 -> ln 3; class 2 at 2 / (1 + 1 + 2) -> ln 2; weighted mean over the kept pixels
    expected = (0.25 * torch.log(torch.tensor(3.0)) + 1.0 * torch.log(torch.tensor(2.0))) / 1.25
    loss = seg.weighted_loss(logits, labels, torch.tensor([0.25, 1.0, 1.0]), ignore_index=255)
    torch.testing.assert_close(loss, expected)
    # logits at half the labels' size are upsampled first: a constant map stays constant
    small = torch.zeros(1, 3, 1, 2)
    torch.testing.assert_close(seg.weighted_loss(small, torch.zeros(1, 2, 4, dtype=torch.long), None, 255),
                               torch.log(torch.tensor(3.0)))


def test_oracle_warp_gives_the_box_more_area_than_the_plain_resize():
    images, masks, boxes = seg.load_split("validation", 2, seed=0)
    args = SimpleNamespace(max_ratio=1e4, temperature=1.5, warped_size=128, segmenter="upernet_convnext")
    plain = seg.fixed_warps("plain", images, masks, boxes, args, depth=None)
    oracle = seg.fixed_warps("oracle", images, masks, boxes, args, depth=None)
    assert plain[0].shape == oracle[0].shape == (2, 3, 128, 128)
    # the plain resize's share is the box's share of the canvas
    x0, y0, x1, y1 = boxes.unbind(1)
    torch.testing.assert_close(plain[2].float(), ((x1 - x0) * (y1 - y0) / 320**2).float())
    assert (oracle[2] > 10 * plain[2]).all()
    # and the article's pixels (mask > 0) fill more of the oracle's warped mask
    assert ((oracle[1] > 0).sum((1, 2)) > 10 * (plain[1] > 0).sum((1, 2))).all()


def test_tiny_run_writes_json_and_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from tests.test_trunks import lite0_file

    lite0_file()  # the learned warp needs the `pretrained` extra (skip, or fail under CI=true)
    results, plot, pictures = tmp_path / "r.json", tmp_path / "p.png", tmp_path / "w.png"
    rows = seg.main(["--arms", "plain", "pretrained_input_loss", "--seeds", "0", "--steps", "2", "--batch_size", "2",
                     "--train_canvases", "4", "--validation_canvases", "4", "--threads", "1",
                     "--results", str(results), "--plot", str(plot), "--pictures", str(pictures)])
    assert [(r["arm"], r["seed"]) for r in rows] == [("plain", 0), ("pretrained_input_loss", 0)]
    stored = json.loads(results.read_text())
    assert stored["runs"] == json.loads(json.dumps(rows))
    for row in rows:
        assert 0.0 <= row["miou"] <= 1.0 and 0.0 <= row["miou_articles"] <= 1.0
        assert sum(map(sum, row["confusion"])) == 4 * 320 * 320  # every validation pixel on the input grid
    assert rows[1]["box_area_share_at_start"] > 5 * rows[0]["box_area_share_at_start"]  # the learned warp zooms
    for path in (plot, pictures):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    # the stored runs give the same table and plot without training
    again = tmp_path / "again.png"
    assert seg.main(["--from_results", str(results), "--plot", str(again)]) == stored["runs"]
    assert again.stat().st_size > 5000
