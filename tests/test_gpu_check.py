"""`benchmarks/gpu_check.sh` without a GPU: a clean exit that says so. And a CPU smoke run of the timing script it
ends with, so that the first GPU machine does not find it broken."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: run benchmarks/gpu_check.sh itself")
def test_without_a_gpu_it_exits_cleanly_and_says_why(tmp_path):
    assert shutil.which("bash"), "bash is needed to run benchmarks/gpu_check.sh"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU available" in result.stdout and "nothing to check" in result.stdout
    assert "installing" not in result.stdout  # it stops before installing anything


def test_a_missing_interpreter_is_a_clear_error(tmp_path):
    env = {**os.environ, "PYTHON": str(tmp_path / "no-such-python")}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not found" in result.stderr


def test_the_timing_script_runs_on_the_cpu_in_smoke_mode():
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_benchmark.py"), "--smoke", "--status", "GPU=none"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout
    for row in ("| GPU", "Mamba mixer forward (PyTorch path)", "eager float32", "torch.compile float32",
                "eager bfloat16"):
        assert row in table, row
