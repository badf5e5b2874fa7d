"""benchmarks/benchmark_inverse_warp.py (issue #26, item 6): its warp is a valid non-uniform one, a smoke run prints
the table and returns finite ratios, and bad sizes are refused by the parser."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import benchmark_inverse_warp
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return benchmark_inverse_warp


def test_the_benchmarked_warp_is_non_uniform_and_spans_the_image(bench):
    edges = bench.random_edges(3, 32, 512, torch.Generator().manual_seed(0))
    assert edges.shape == (3, 33) and (edges[:, 0] == 0).all()
    torch.testing.assert_close(edges[:, -1], torch.full((3,), 512.0, dtype=torch.float64))
    sizes = edges.diff(dim=-1)
    assert (sizes > 0).all() and (sizes.max(dim=-1).values / sizes.min(dim=-1).values > 1.5).all()
    assert (sizes.max(dim=-1).values / sizes.min(dim=-1).values <= 3 + 1e-9).all()


def test_a_small_run_prints_the_table_and_returns_the_ratios(bench, capsys):
    threads = torch.get_num_threads()
    try:
        ratios = bench.main(["--small", "--runs", "1", "--warmup", "0", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "decode head (1/4-size logits)" in out and "inverse warp from 64x64 logits" in out
    assert set(ratios) == {"inverse warp from 64 / decode head", "inverse warp from 16 / decode head",
                           "upsampling / decode head"}
    assert all(math.isfinite(value) and value > 0 for value in ratios.values()), ratios


@pytest.mark.parametrize("argv", [["--image_size", "500"], ["--num_labels", "0"]])
def test_bad_sizes_are_refused_by_the_parser(bench, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    assert stop.value.code == 2 and argv[0] in capsys.readouterr().err
