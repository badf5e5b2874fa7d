"""ONNX export (`torch.onnx.export(..., dynamo=True)`, dynamic batch axis) of DART-DeiT and DART-Vim: onnxruntime on
CPU reproduces PyTorch's logits on the original fixtures' inputs and at other batch sizes; the CLI
`conversion/export_onnx.py` verifies `model.onnx` on crops of the bundled photo (clips of shifted crops for DART
VideoMamba folders, the current and the legacy `model_type: dart` format), leaves no file behind when that fails, and
refuses bad arguments and incomplete or non-DART folders with exit code 2 before it exports."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conversion import export_onnx
from conversion.convert_dart_original import convert
from modeling_dart import DartForImageClassification, DartImageProcessor
from tests.conftest import REPO_ROOT, require_fixture, tiny_config

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


@functools.cache
def fixture_model(variant: str):
    from safetensors.torch import load_file

    folder = require_fixture(f"{variant}_depth2.pth", INPUTS)
    model, _, _ = convert(variant, folder / f"{variant}_depth2.pth")
    return model.eval(), load_file(folder / INPUTS)["pixel_values"]


def run_cli(*args) -> tuple[int, str, str]:
    """`export_onnx.main(args)`: `(exit code, stdout, stderr)`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = export_onnx.main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse's own refusals
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def leftovers(folder) -> list[str]:
    """Files in `folder` that an interrupted or refused export could have left (partial or temporary ONNX files)."""
    return sorted(path.name for path in folder.iterdir() if "partial" in path.name or path.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def converted_export(tmp_path_factory):
    """The `darvit_tiny` fixture converted and saved with its image processor, exported and verified by the CLI at
    batch size 3 with the default `--atol`: `(folder, exit code, stdout, stderr)`."""
    require_fixture("darvit_tiny_depth2.pth", INPUTS)
    model, _ = fixture_model("darvit_tiny")
    folder = tmp_path_factory.mktemp("onnx_fixture") / "darvit_tiny"
    model.save_pretrained(folder)
    DartImageProcessor().save_pretrained(folder)
    return (folder, *run_cli(folder, "--batch_size", 3))


def test_cli_verifies_a_correct_export_on_crops_of_the_photo(converted_export):
    folder, code, out, err = converted_export
    assert code == 0 and "error" not in err, err
    assert (folder / "model.onnx").is_file() and leftovers(folder) == []
    assert "chelsea.jpg" in out and "verified" in out
    for batch_size in (1, 3, 4):  # size 1, the traced size and one more
        assert f"batch {batch_size}:" in out


@pytest.mark.parametrize("variant", ["darvit_tiny", "darvim_tiny"])
def test_onnxruntime_reproduces_pytorch_on_the_fixture_inputs(variant, tmp_path, request):
    require_fixture(f"{variant}_depth2.pth", INPUTS)
    model, pixels = fixture_model(variant)
    if variant == "darvit_tiny":  # the file the CLI wrote (traced at batch size 3)
        path = request.getfixturevalue("converted_export")[0] / "model.onnx"
    else:
        path = export_onnx.export(model, tmp_path / "model.onnx", batch_size=2)
    session = export_onnx.onnx_session(path)
    assert session.get_inputs()[0].shape[0] not in (1, 2, 4)  # the batch axis is symbolic
    if model.config.backbone == "vim":  # one ONNX `Scan` over the time steps per mixer (not closed-form blocks)
        import onnx

        op_types = [node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node]
        assert op_types.count("Scan") == model.config.num_hidden_layers
    for batch in (pixels, pixels[1:2], pixels[[3, 0]], pixels[[3, 0, 2]]):  # the fixture's 4, and 1, 2, 3
        logits, regions, _ = session.run(None, {"pixel_values": batch.numpy()})
        with torch.no_grad():
            expected = model(batch)
        assert logits.shape == (batch.shape[0], 1000)
        torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.from_numpy(regions), expected.regions, atol=1e-2, rtol=0)


@pytest.fixture(scope="module")
def exported_folder(tmp_path_factory):
    """A tiny DART-DeiT folder without an image processor, exported once by the CLI: `(folder, exit code, stdout)`."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("onnx") / "model"
    DartForImageClassification(tiny_config(scorer_trunk_depth=4)).eval().save_pretrained(folder)
    code, out, err = run_cli(folder)
    assert "error" not in err, err
    return folder, code, out


@pytest.fixture
def reuse_export(exported_folder, monkeypatch):
    """`export_onnx.export` copies the file the CLI already exported (the export itself is checked above)."""
    calls = []

    def copy(model, path, batch_size=2):
        calls.append(path)
        return shutil.copy(exported_folder[0] / "model.onnx", path)

    monkeypatch.setattr(export_onnx, "export", copy)
    return calls


@pytest.fixture
def no_export(monkeypatch):
    """`export_onnx.export` fails the test: the refusals under test must come before the export."""

    def refuse(*args, **kwargs):
        raise AssertionError("the exporter exported before it refused the input")

    monkeypatch.setattr(export_onnx, "export", refuse)


def test_cli_writes_and_verifies_model_onnx(exported_folder, tmp_path, capsys, reuse_export):
    folder, code, out = exported_folder
    assert code == 0 and (folder / "model.onnx").is_file() and leftovers(folder) == []
    assert "verified" in out and "batch 1:" in out and "batch 2:" in out
    # an existing output is kept unless --overwrite
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    code, _, err = run_cli(folder)
    assert code == 2 and "exists; pass --overwrite" in err and reuse_export == []
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp
    # --output elsewhere
    code, out, err = run_cli(folder, "--output", tmp_path / "elsewhere.onnx")
    assert code == 0 and "verified" in out, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["elsewhere.onnx"]


def test_photo_batches_are_distinct_crops_through_the_folder_processor(exported_folder):
    folder = exported_folder[0]
    processor = DartImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32})
    batches = export_onnx.photo_batches(processor, [1, 2, 5])
    assert [tuple(batch.shape) for batch in batches] == [(1, 3, 32, 32), (2, 3, 32, 32), (5, 3, 32, 32)]
    images = torch.cat(batches)
    assert images.dtype == torch.float32 and bool(images.isfinite().all())
    distinct = {tuple(image.flatten()[::37].tolist()) for image in images}
    assert len(distinct) >= 6  # several crops, not one image repeated
    from PIL import Image

    photo = Image.open(REPO_ROOT / "conversion" / "assets" / "chelsea.jpg").convert("RGB")
    whole = processor(photo, return_tensors="pt")["pixel_values"]
    assert any(torch.equal(image, whole[0]) for image in images)  # the whole photo is one of them
    # a folder without a processor gets the evaluation recipe at the model's own input size
    model = DartForImageClassification.from_pretrained(folder)
    default = export_onnx.image_processor_for(folder, model.config)
    assert tuple(export_onnx.photo_batches(default, [2])[0].shape) == (2, 3, 64, 64)


def test_cli_reports_a_failed_verification_and_leaves_no_file(exported_folder, tmp_path, monkeypatch, reuse_export):
    folder, _, _ = exported_folder
    real = export_onnx.compare

    def off_by_one(output):  # as if onnxruntime computed something else
        def compare(model, session, pixel_values):
            diffs = real(model, session, pixel_values)
            return {**diffs, output: diffs[output] + 1.0}

        return compare

    for output in ("logits", "regions"):
        monkeypatch.setattr(export_onnx, "compare", off_by_one(output))
        code, out, err = run_cli(folder, "--output", tmp_path / "again.onnx")
        assert code == 1 and "verified" not in out, (output, out, err)
        assert list(tmp_path.iterdir()) == [], output
        assert f"onnxruntime's {output} differ from PyTorch's" in err and len(err.strip().splitlines()) == 1, err
    # a failed verification with --overwrite keeps the file it would have replaced
    (tmp_path / "again.onnx").write_bytes(b"the previous export")
    assert run_cli(folder, "--output", tmp_path / "again.onnx", "--overwrite")[0] == 1
    assert [path.name for path in tmp_path.iterdir()] == ["again.onnx"]
    assert (tmp_path / "again.onnx").read_bytes() == b"the previous export"
    # so does an export that raises
    monkeypatch.setattr(export_onnx, "compare", real)

    def crash(model, path, batch_size=2):
        Path(path).write_bytes(b"half a file")
        raise RuntimeError("the exporter crashed")

    monkeypatch.setattr(export_onnx, "export", crash)
    with pytest.raises(RuntimeError, match="crashed"):
        export_onnx.main([str(folder), "--output", str(tmp_path / "again.onnx"), "--overwrite"])
    assert [path.name for path in tmp_path.iterdir()] == ["again.onnx"]
    assert (tmp_path / "again.onnx").read_bytes() == b"the previous export"


def test_cli_checks_every_argument_before_exporting(exported_folder, tmp_path, no_export):
    folder = exported_folder[0]
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    cases = [
        (["--atol", "nan"], "--atol"),
        (["--atol", "inf"], "--atol"),
        (["--atol", "-1"], "--atol"),
        (["--batch_size", "0"], "--batch_size"),
        (["--batch_size", "1"], "--batch_size"),
        (["--batch_size", "65"], "--batch_size"),
        (["--batch_size", "1025"], "--batch_size"),
        (["--output", tmp_path / "missing" / "model.onnx"], "--output"),
        (["--output", tmp_path], "--output"),
        (["--output", folder / "model.safetensors", "--overwrite"], "--output"),
        (["--output", tmp_path / "taken.onnx"], "--overwrite"),
    ]
    for args, flag in cases:
        if "--output" not in args:  # one bad argument at a time
            args = [*args, "--output", tmp_path / "new.onnx"]
        code, out, err = run_cli(folder, *args)
        assert code == 2 and out == "", (args, out, err)
        assert flag in err and len(err.strip().splitlines()) == 1, (args, err)
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep" and (folder / "model.safetensors").stat().st_size > 1000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken.onnx"]


def test_export_function_refuses_a_batch_size_outside_its_range(tmp_path):
    model = DartForImageClassification(tiny_config()).eval()
    for batch_size, error in ((1, ValueError), (65, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="batch_size"):
            export_onnx.export(model, tmp_path / "model.onnx", batch_size=batch_size)
    assert list(tmp_path.iterdir()) == []


def edited_copy(folder, destination, edit):
    """A copy of the saved model `folder` whose weights file is `edit(state_dict)`."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, destination, ignore=shutil.ignore_patterns("*.onnx"))
    weights = load_file(destination / "model.safetensors")
    edit(weights)
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return destination


def test_cli_refuses_folders_whose_weights_do_not_match_the_model(exported_folder, tmp_path, no_export):
    folder = exported_folder[0]
    key = "dart.embeddings.position_embeddings"
    cases = {
        "missing": (lambda weights: weights.pop(key), key),
        "unexpected": (lambda weights: weights.__setitem__("dart.extra.weight", torch.zeros(2)), "dart.extra.weight"),
        "mismatched": (lambda weights: weights.__setitem__(key, torch.zeros(3, 3)), key),
    }
    for name, (edit, named) in cases.items():
        broken = edited_copy(folder, tmp_path / name, edit)
        code, out, err = run_cli(broken)
        assert code == 2 and out == "", (name, out, err)
        assert name in err and named in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (broken / "model.onnx").exists()


def tiny_video_config(**overrides):
    from modeling_dart import DartVideoConfig

    kwargs = {"image_size": 64, "patch_size": 8, "score_grid_size": 4, "num_tokens": 16, "hidden_size": 32,
              "num_hidden_layers": 2, "num_frames": 2, "num_labels": 3, "scorer_trunk": "mobilenet_v3_small",
              "scorer_head": "v1", "scorer_trunk_depth": 4}
    return DartVideoConfig(**{**kwargs, **overrides})


@pytest.fixture(scope="module")
def video_folders(tmp_path_factory):
    """A tiny random DART VideoMamba folder without a processor (`model_type: dart_video`) and a copy saved as before
    the video family had its own model type (`model_type: dart`, `backbone: videomamba`): `(video, legacy)`."""
    from modeling_dart import DartVideoMambaForVideoClassification

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("onnx_video")
    video, legacy = root / "video", root / "legacy"
    DartVideoMambaForVideoClassification(tiny_video_config()).eval().save_pretrained(video)
    shutil.copytree(video, legacy)
    config = json.loads((legacy / "config.json").read_text())
    assert (config["model_type"], config["backbone"]) == ("dart_video", "videomamba")
    (legacy / "config.json").write_text(json.dumps({**config, "model_type": "dart"}))
    return video, legacy


def test_cli_exports_and_verifies_video_folders(video_folders, tmp_path, monkeypatch):
    from modeling_dart import DartVideoMambaForVideoClassification

    video, legacy = video_folders
    code, out, err = run_cli(video, "--output", tmp_path / "video.onnx")
    assert code == 0 and "error" not in err, (out, err)
    assert "verified" in out and "chelsea.jpg" in out and leftovers(tmp_path) == []
    for batch_size in (1, 2, 3):  # size 1, the traced size and one more
        assert f"batch {batch_size}:" in out
    # the file takes (batch, frames, 3, H, W) clips, any batch, and gives per-frame regions; eager PyTorch as reference
    session = export_onnx.onnx_session(tmp_path / "video.onnx")
    assert session.get_inputs()[0].shape[1:] == [2, 3, 64, 64]
    assert not isinstance(session.get_inputs()[0].shape[0], int)
    model = DartVideoMambaForVideoClassification.from_pretrained(video).eval()
    clips = torch.randn(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    logits, regions, _ = session.run(None, {"pixel_values": clips.numpy()})
    with torch.no_grad():
        expected = model(clips)
    assert regions.shape == (3, 2, 16, 4) and logits.shape == (3, 3)
    torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(regions), expected.regions, atol=1 / 32, rtol=0)
    # the legacy folder is the same model: verifying the file above against it (instead of exporting it again) checks
    # that it loads as that video model, with its weights
    monkeypatch.setattr(export_onnx, "export", lambda model, path, batch_size=2: shutil.copy(tmp_path / "video.onnx",
                                                                                              path))
    code, out, err = run_cli(legacy)
    assert code == 0 and "verified" in out and "batch 3:" in out, (out, err)
    assert (legacy / "model.onnx").is_file() and leftovers(legacy) == []


def test_video_verification_clips_are_shifted_crops_through_the_folder_processor(video_folders, tmp_path, no_export):
    from modeling_dart import DartVideoProcessor

    processor = DartVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    batches = export_onnx.photo_clips(processor, [1, 3], num_frames=4)
    assert [tuple(batch.shape) for batch in batches] == [(1, 4, 3, 32, 32), (3, 4, 3, 32, 32)]
    clips = torch.cat(batches)
    assert clips.dtype == torch.float32 and bool(clips.isfinite().all())
    # every frame differs from the previous one, by less than the first frames of two clips (other crops) differ
    steps = (clips[:, 1:] - clips[:, :-1]).abs().mean(dim=(2, 3, 4))
    crops = [(clips[i, 0] - clips[j, 0]).abs().mean() for i in range(4) for j in range(i)]
    assert float(steps.min()) > 0 and float(steps.max()) < float(min(crops))
    # without a processor: ImageNet-normalised frames at the model's input size (negative values included)
    video = video_folders[0]
    default = export_onnx.verification_batches(video, export_onnx.read_dart_config(video), 2)
    assert [tuple(batch.shape) for batch in default] == [(1, 2, 3, 64, 64), (2, 2, 3, 64, 64), (3, 2, 3, 64, 64)]
    assert float(torch.cat(default).min()) < -0.5
    # the folder's video processor is the one used: no normalisation keeps pixels in [0, 1] ...
    plain = tmp_path / "plain"
    shutil.copytree(video, plain)
    DartVideoProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_normalize=False,
                       num_frames=2).save_pretrained(plain)
    assert (plain / "video_preprocessor_config.json").is_file()
    clips = torch.cat(export_onnx.verification_batches(plain, export_onnx.read_dart_config(plain), 2))
    assert float(clips.min()) >= 0 and float(clips.max()) <= 1
    # ... and one that does not give the model's input size is refused before the export
    DartVideoProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}).save_pretrained(plain)
    code, out, err = run_cli(plain)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "video processor" in err and "--no_verify" in err and not (plain / "model.onnx").exists()


def test_cli_refuses_broken_video_folders_before_exporting(video_folders, tmp_path, no_export):
    video = video_folders[0]
    key = "dart.temporal_position_embeddings"
    missing = edited_copy(video, tmp_path / "missing", lambda weights: weights.pop(key))
    mismatched = edited_copy(video, tmp_path / "mismatched", lambda weights: weights.__setitem__(key, torch.zeros(3)))
    wrong_family = tmp_path / "wrong_family"  # model_type dart_video with an image backbone
    shutil.copytree(video, wrong_family)
    config = json.loads((wrong_family / "config.json").read_text())
    (wrong_family / "config.json").write_text(json.dumps({**config, "backbone": "vit"}))
    for folder, words in ((missing, ("missing", key)), (mismatched, ("mismatched", key)),
                          (wrong_family, ("wrong_family", "backbone"))):
        code, out, err = run_cli(folder)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (folder, out, err)
        assert all(word in err for word in words), (folder, err)
        assert not (folder / "model.onnx").exists()


def test_cli_refuses_folders_that_are_not_dart_models(tmp_path, no_export):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "vit"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    # a plain Transformers ViT folder (weights and image processor included)
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    vit = tmp_path / "plain_vit"
    ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=16)).save_pretrained(vit)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(vit)
    cases = {tmp_path / "missing": "is not a folder", empty: "no config.json", other: "'vit' model, not a DART model",
             broken: "not a valid model config", vit: "'vit' model, not a DART model"}
    for folder, message in cases.items():
        code, out, err = run_cli(folder)
        assert code == 2 and out == "" and message in err, (folder, err)
        assert str(folder) in err and len(err.strip().splitlines()) == 1, (folder, err)
    assert not any(path.name == "model.onnx" for path in tmp_path.rglob("*"))


def test_the_readme_test_command_is_what_ci_runs_and_installs_the_onnx_extra():
    from tests.conftest import REPO_ROOT

    ci = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (REPO_ROOT / "README.md").read_text()
    extras = ci.split('pip install -q -e ".[', 1)[1].split(']"', 1)[0].split(",")
    assert "onnx" in extras and ci.endswith("python -m pytest -q")
