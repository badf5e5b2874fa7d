"""benchmarks/benchmark_video_motion.py (issue #27, item 5): the three models share their backbone, a smoke run prints
the table and returns finite ratios, and a budget the per-frame tokeniser cannot match is refused by the parser."""

from __future__ import annotations

import argparse
import math
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import benchmark_video_motion
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return benchmark_video_motion


def test_the_models_share_the_backbone_and_differ_in_the_tokeniser(bench):
    args = argparse.Namespace(layers=1, frames=2, image_size=64, num_tokens=8)
    models = bench.build_models(args)
    assert [n for _, n in models.values()] == [16, 8, 4]
    plain = models[bench.PLAIN][0].state_dict()
    for name in (bench.MOTION, bench.PER_FRAME):
        model = models[name][0]
        assert model.config.video_tokenizer == ("motion" if name == bench.MOTION else "per_frame")
        for key, value in model.state_dict().items():
            if not key.startswith("dart.embeddings."):
                assert torch.equal(value, plain[key]), key


def test_a_small_run_prints_the_table_and_returns_the_ratios(bench, capsys):
    threads = torch.get_num_threads()
    try:
        ratios = bench.main(["--small", "--runs", "1", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "DART motion tokeniser: scorer alone" in out and "## Ratios" in out
    assert set(ratios) == {
        f"{bench.MOTION}: tokeniser share", f"{bench.PER_FRAME}: tokeniser share", f"{bench.PLAIN}: tokeniser share",
        f"{bench.MOTION}: scorer share", f"{bench.MOTION} at 32 / plain at 64",
        f"{bench.PER_FRAME} at 32 / plain at 64",
    }
    assert all(math.isfinite(value) and value > 0 for value in ratios.values()), ratios


@pytest.mark.parametrize("tokens", ["30", "0", "100"])
def test_a_budget_the_per_frame_tokeniser_cannot_match_is_refused(bench, capsys, tokens):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--small", "--num_tokens", tokens])
    assert stop.value.code == 2 and "--num_tokens" in capsys.readouterr().err
