"""ONNX export (`torch.onnx.export(..., dynamo=True)`, dynamic batch axis) of DART-DeiT and DART-Vim: onnxruntime on
CPU reproduces PyTorch's logits on the original fixtures' inputs and at another batch size; the CLI
`conversion/export_onnx.py` writes and verifies `model.onnx` and refuses bad input with exit code 2."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil

import pytest
import torch

from conversion import export_onnx
from conversion.convert_dart_original import convert
from modeling_dart import DartForImageClassification
from tests.conftest import require_fixture, tiny_config

INPUTS = "inputs_b4_448_seed1234.safetensors"


@pytest.fixture(autouse=True)
def onnx_extra():
    """The `onnx` extra is installed by the test command; without it these tests fail under CI=true, else skip."""
    missing = [name for name in ("onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"{missing} not installed (pip install -e '.[onnx]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " -- required under CI")
        pytest.skip(reason)


@functools.lru_cache(maxsize=None)
def fixture_model(variant: str):
    from safetensors.torch import load_file

    folder = require_fixture(f"{variant}_depth2.pth", INPUTS)
    model, _, _ = convert(variant, folder / f"{variant}_depth2.pth")
    return model.eval(), load_file(folder / INPUTS)["pixel_values"]


@pytest.mark.parametrize("variant", ["darvit_tiny", "darvim_tiny"])
def test_onnxruntime_reproduces_pytorch_on_the_fixture_inputs(variant, tmp_path):
    require_fixture(f"{variant}_depth2.pth", INPUTS)
    model, pixels = fixture_model(variant)
    path = export_onnx.export(model, tmp_path / "model.onnx", batch_size=2)
    session = export_onnx.onnx_session(path)
    assert session.get_inputs()[0].shape[0] not in (1, 2, 4)  # the batch axis is symbolic
    if model.config.backbone == "vim":  # one ONNX `Scan` over the time steps per mixer (not closed-form blocks)
        import onnx

        op_types = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
        assert op_types.count("Scan") == model.config.num_hidden_layers
    for batch in (pixels, pixels[1:2], pixels[[3, 0, 2]]):  # the fixture batch of 4, and batch sizes 1 and 3
        logits, regions, _ = session.run(None, {"pixel_values": batch.numpy()})
        with torch.no_grad():
            expected = model(batch)
        assert logits.shape == (batch.shape[0], 1000)
        torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.from_numpy(regions), expected.regions, atol=1e-2, rtol=0)


@pytest.fixture(scope="module")
def exported_folder(tmp_path_factory):
    """A tiny DART-DeiT folder, exported once by the CLI: `(folder, exit code, stdout)`."""
    import contextlib
    import io

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx") / "model"
    DartForImageClassification(tiny_config(scorer_trunk_depth=4)).eval().save_pretrained(folder)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export_onnx.main([str(folder)])
    return folder, code, stdout.getvalue()


def test_cli_writes_and_verifies_model_onnx(exported_folder, tmp_path, capsys, monkeypatch):
    folder, code, out = exported_folder
    assert code == 0 and (folder / "model.onnx").is_file()
    assert "verified" in out and "batch 1" in out and "batch 2" in out
    # an existing output is kept unless --overwrite
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    assert export_onnx.main([str(folder)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp
    # --output elsewhere (the export itself is the one already checked: reuse its file)
    monkeypatch.setattr(export_onnx, "export", lambda model, path, batch_size: shutil.copy(folder / "model.onnx", path))
    assert export_onnx.main([str(folder), "--output", str(tmp_path / "elsewhere.onnx")]) == 0
    assert (tmp_path / "elsewhere.onnx").is_file() and "verified" in capsys.readouterr().out


def test_cli_refuses_folders_that_are_not_dart_models(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "vit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cases = {tmp_path / "missing": "is not a folder", empty: "no config.json", other: "'vit' model, not a DART model",
             broken: "not a valid model config"}
    for folder, message in cases.items():
        assert export_onnx.main([str(folder)]) == 2, folder
        assert message in capsys.readouterr().err
    assert export_onnx.main([str(empty), "--batch_size", "0"]) == 2
    assert "--batch_size must be at least 1" in capsys.readouterr().err
    assert not any(path.name == "model.onnx" for path in tmp_path.rglob("*"))


def test_cli_reports_a_failed_verification(exported_folder, tmp_path, capsys, monkeypatch):
    folder, _, _ = exported_folder
    real = export_onnx.compare

    def off_by_one(model, session, pixel_values):  # as if onnxruntime computed something else
        diffs = real(model, session, pixel_values)
        return {**diffs, "logits": diffs["logits"] + 1.0}

    monkeypatch.setattr(export_onnx, "compare", off_by_one)
    monkeypatch.setattr(export_onnx, "export", lambda model, path, batch_size: shutil.copy(folder / "model.onnx", path))
    assert export_onnx.main([str(folder), "--output", str(tmp_path / "again.onnx")]) == 1
    assert "differ from PyTorch's" in capsys.readouterr().err


def test_the_readme_test_command_is_what_ci_runs_and_installs_the_onnx_extra():
    from tests.conftest import REPO_ROOT

    ci = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (REPO_ROOT / "README.md").read_text()
    extras = ci.split('pip install -q -e ".[', 1)[1].split(']"', 1)[0].split(",")
    assert "onnx" in extras and ci.endswith("python -m pytest -q")
