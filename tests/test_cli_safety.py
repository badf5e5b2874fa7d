"""The command-line scripts never lose data and fail clearly: the converters (`conversion/convert_*.py`) and the
training scripts (`examples/run_*_classification.py`) refuse a non-empty output folder without their overwrite flag,
refuse an output that contains or lies inside an input, write through a temporary sibling folder that only a
successful run moves into place, and turn bad arguments and bad data into one-line messages with exit code 2."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from conversion import convert_dart_original as conv
from conversion import convert_videomamba_original as cv
from conversion import convert_vit_to_dart as vit_cli
from modeling_dart import conversion_utils
from tests.conftest import REPO_ROOT, require_fixture
from tests.test_video import _tiny_dart_folder, make_original_state_dict
from tests.test_vit_conversion import _save_vit

EXAMPLES = REPO_ROOT / "examples"
TINY_MODEL = ("image_size=32,patch_size=8,score_grid_size=4,num_tokens=16,hidden_size=16,num_hidden_layers=1,"
              "num_attention_heads=2,scorer_trunk_depth=2,freeze_scorer_trunk=false")
RUN = ["--config_overrides", TINY_MODEL, "--crop_pct", "1.0", "--do_train", "true", "--do_eval", "true",
       "--max_steps", "1", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
       "--learning_rate", "1e-3", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
       "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--seed", "0"]


# ---------------------------------------------------------------------------------------------------- helpers
def exit_code(main, argv, capsys) -> tuple[int, str]:
    """`(exit code, stderr)` of a script's `main(argv)`, whether it returns the code or raises `SystemExit`."""
    capsys.readouterr()  # what the test printed before
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what a run must leave untouched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_images(folder: Path, classes=("cat", "dog"), per_class=3, size=40, seed=0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / name / f"{name}_{i}.jpg")
    return folder


@pytest.fixture(scope="module")
def image_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    write_images(root / "train", per_class=3)
    write_images(root / "validation", per_class=2, seed=1)
    return root


def data_args(root: Path) -> list[str]:
    return ["--train_dir", str(root / "train"), "--validation_dir", str(root / "validation")]


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_DATASETS_OFFLINE", "1")
    patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("run_image_classification")
    finally:
        sys.path.remove(str(EXAMPLES))
        patch.undo()


@pytest.fixture(scope="module")
def video_runner(runner):
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("run_video_classification")
    finally:
        sys.path.remove(str(EXAMPLES))


def dart_checkpoint() -> Path:
    return require_fixture("darvit_tiny_depth2.pth") / "darvit_tiny_depth2.pth"


def video_checkpoint(path: Path, **changes) -> Path:
    state = make_original_state_dict()
    state.update(changes)
    torch.save({"model": state}, path)
    return path


# ------------------------------------------------------------------------------- converters: no data loss (#24)
def test_dart_converter_never_deletes_its_checkpoint_or_unrelated_files(tmp_path, capsys):
    folder = tmp_path / "dir"
    folder.mkdir()
    checkpoint = folder / "x.pth"
    checkpoint.write_bytes(dart_checkpoint().read_bytes())
    (folder / "notes.txt").write_text("mine")
    before = listing(folder)
    code, err = exit_code(conv.main, ["--variant", "darvit_tiny", "--checkpoint", checkpoint, "--output_dir", folder,
                                      "--overwrite"], capsys)
    assert code == 2 and "--checkpoint" in err and "--output_dir" in err
    assert listing(folder) == before


def test_overwrite_replaces_the_converters_files_and_keeps_the_rest(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    code, err = exit_code(conv.main, ["--variant", "darvit_tiny", "--checkpoint", dart_checkpoint(), "--output_dir",
                                      out, "--overwrite"], capsys)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "dart"
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it


def test_vit_converter_never_replaces_its_source(tmp_path, capsys):
    source = tmp_path / "vit"
    _save_vit(source, image_size=32)
    before = listing(source)
    for output in (source, source / "dart"):
        code, err = exit_code(vit_cli.main, ["--source", source, "--output_dir", output, "--overwrite"], capsys)
        assert code == 2 and "--source" in err, err
        assert listing(source) == before


def test_video_converter_never_deletes_its_inputs(tmp_path, capsys):
    folder = tmp_path / "dir"
    folder.mkdir()
    checkpoint = video_checkpoint(folder / "c.pth")
    labels = tmp_path / "labels" / "names.txt"
    labels.parent.mkdir()
    labels.write_text("\n".join("abcde") + "\n")
    before = listing(folder)
    code, err = exit_code(cv.main, ["--checkpoint", checkpoint, "--output_dir", folder, "--uniform_scorer",
                                    "--overwrite"], capsys)
    assert code == 2 and "--checkpoint" in err and listing(folder) == before
    code, err = exit_code(cv.main, ["--checkpoint", checkpoint, "--output_dir", labels.parent, "--uniform_scorer",
                                    "--labels_file", labels, "--overwrite"], capsys)
    assert code == 2 and "--labels_file" in err and labels.read_text().startswith("a\n")


@pytest.mark.parametrize("converter", ["dart", "vit", "video"])
def test_an_existing_file_as_output_dir_is_a_clear_error(tmp_path, capsys, converter):
    target = tmp_path / "taken"
    target.write_text("a file")
    if converter == "dart":
        main, argv = conv.main, ["--variant", "darvit_tiny", "--checkpoint", dart_checkpoint()]
    elif converter == "vit":
        _save_vit(tmp_path / "vit", image_size=32)
        main, argv = vit_cli.main, ["--source", tmp_path / "vit"]
    else:
        main, argv = cv.main, ["--checkpoint", video_checkpoint(tmp_path / "c.pth"), "--uniform_scorer"]
    for flags in ([], ["--overwrite"]):
        code, err = exit_code(main, [*argv, "--output_dir", target, *flags], capsys)
        assert code == 2 and "--output_dir" in err and "file" in err
        assert len(err.strip().splitlines()) == 1
        assert target.read_text() == "a file"


def test_a_failed_verify_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    def failing_verify(*args, **kwargs):
        raise conversion_utils.ConversionError("the reloaded model differs")

    monkeypatch.setattr(conv, "verify_folder", failing_verify)
    out = tmp_path / "new" / "out"
    code, err = exit_code(conv.main, ["--variant", "darvit_tiny", "--checkpoint", dart_checkpoint(), "--output_dir",
                                      out, "--verify"], capsys)
    assert code == 2 and "differs" in err
    assert list(tmp_path.iterdir()) == []  # neither the folder, nor its missing parent, nor a temporary folder
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes(b"the previous model")
    code, err = exit_code(conv.main, ["--variant", "darvit_tiny", "--checkpoint", dart_checkpoint(), "--output_dir",
                                      old, "--verify", "--overwrite"], capsys)
    assert code == 2
    assert listing(old) == {"model.safetensors": b"the previous model"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


# --------------------------------------------------------------------- converters: clear errors (#24.8, #24.9)
@pytest.mark.parametrize("flag", ["--num_tokens", "--image_size"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_video_converter_refuses_non_positive_sizes(tmp_path, capsys, flag, value):
    code, err = exit_code(cv.main, ["--checkpoint", video_checkpoint(tmp_path / "c.pth"), "--output_dir",
                                    tmp_path / "out", "--uniform_scorer", flag, value], capsys)
    assert code == 2 and flag in err
    assert not (tmp_path / "out").exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--num_tokens", "--image_size"]), value=st.integers(-10**6, 10**6))
def test_video_converter_size_flags_accept_or_name_themselves(capsys, flag, value):
    parser = cv.build_parser()
    argv = ["--checkpoint", "c.pth", "--output_dir", "out", "--uniform_scorer", flag, str(value)]
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        assert stop.code == 2 and value < 1
        assert flag in capsys.readouterr().err
    else:
        assert value >= 1 and getattr(args, flag[2:]) == value


def test_non_finite_weights_are_refused_by_every_converter(tmp_path, capsys):
    state = torch.load(dart_checkpoint(), map_location="cpu", weights_only=True)
    state["model"]["head.bias"][3] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    code, err = exit_code(conv.main, ["--variant", "darvit_tiny", "--checkpoint", tmp_path / "nan.pth", "--output_dir",
                                      tmp_path / "a"], capsys)
    assert code == 2 and "classifier.bias" in err and "NaN" in err

    weight = make_original_state_dict()["norm_f.weight"].clone()
    weight[0] = float("inf")
    code, err = exit_code(cv.main, ["--checkpoint", video_checkpoint(tmp_path / "inf.pth", **{"norm_f.weight": weight}),
                                    "--output_dir", tmp_path / "b", "--uniform_scorer"], capsys)
    assert code == 2 and "norm_f.weight" in err and "inf" in err

    source = tmp_path / "vit"
    _save_vit(source, image_size=32)
    tensors = load_file(source / "model.safetensors")
    tensors["classifier.weight"][0, 0] = float("nan")
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    code, err = exit_code(vit_cli.main, ["--source", source, "--output_dir", tmp_path / "c"], capsys)
    assert code == 2 and "classifier.weight" in err and "NaN" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inf.pth", "nan.pth", "vit"]


def test_revision_with_a_local_source_is_an_error(tmp_path, capsys):
    source = tmp_path / "vit"
    _save_vit(source, image_size=32)
    code, err = exit_code(vit_cli.main, ["--source", source, "--output_dir", tmp_path / "out", "--revision", "v2"],
                          capsys)
    assert code == 2 and "--revision" in err
    assert not (tmp_path / "out").exists()


def test_scorer_from_a_folder_missing_a_tensor_is_refused(tmp_path, capsys):
    folder, _ = _tiny_dart_folder(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["classifier.bias"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    code, err = exit_code(cv.main, ["--checkpoint", video_checkpoint(tmp_path / "c.pth"), "--output_dir",
                                    tmp_path / "out", "--scorer_from", folder], capsys)
    assert code == 2 and "--scorer_from" in err and "classifier.bias" in err
    assert not (tmp_path / "out").exists()


def test_scorer_from_keeps_every_scorer_setting(tmp_path):
    """#22.3: the scorer settings come from the source folder's config, including fields added after the head."""
    folder, _ = _tiny_dart_folder(tmp_path, scorer_max_density_ratio=37.5, scorer_temperature=0.6,
                                  score_normalization="batch")
    model, _, _ = cv.convert(video_checkpoint(tmp_path / "c.pth"), scorer_from=folder)
    assert model.config.scorer_max_density_ratio == 37.5
    assert model.config.scorer_temperature == 0.6
    assert model.config.score_normalization == "batch"


# ------------------------------------------------------------------------------------ one checkpoint loader (#22)
def test_both_converters_read_checkpoints_with_the_same_rules(tmp_path):
    state = make_original_state_dict()
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    for load in (lambda path, key: conv.load_original_checkpoint(path, key),
                 lambda path, key: cv.convert(path, uniform_scorer=True, model_key=key)):
        with pytest.raises(conversion_utils.ConversionError, match="model_ema"):  # a bare file holds no EMA
            load(bare, "model_ema")
    doubled = {"model": {**state, "module.norm_f.weight": state["norm_f.weight"] * 2}}
    torch.save(doubled, tmp_path / "doubled.pth")
    for load in (conv.load_original_checkpoint, cv.load_original_checkpoint):
        with pytest.raises(conversion_utils.ConversionError, match="norm_f.weight"):  # two keys, one name
            load(tmp_path / "doubled.pth")
    with pytest.raises(conversion_utils.ConversionError, match="not found"):
        cv.load_original_checkpoint(tmp_path / "missing.pth")


# ------------------------------------------------------------------------- training script: output folder (#24.3)
def test_training_refuses_a_non_empty_output_dir(runner, image_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous model")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        runner.main([*data_args(image_data), *RUN, "--output_dir", str(out)])
    assert listing(out) == {"model.safetensors": b"the previous model"}


def test_training_overwrite_replaces_its_own_files_only(runner, image_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous model")
    (out / "all_results.json").write_text(json.dumps({"eval_accuracy": 0.99, "old_metric": 1.0}))
    (out / "notes.txt").write_text("mine")
    runner.main([*data_args(image_data), *RUN, "--output_dir", str(out), "--overwrite_output_dir", "true"])
    results = json.loads((out / "all_results.json").read_text())
    assert "old_metric" not in results and "train_loss" in results
    assert set(load_file(out / "model.safetensors")) and (out / "notes.txt").read_text() == "mine"
    card = (out / "README.md").read_text()
    assert "# run" in card and ".partial" not in card  # titled after the folder, not the temporary one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_training_refuses_an_output_that_overlaps_an_input(runner, image_data, tmp_path):
    for output in (image_data, image_data / "train" / "out"):
        with pytest.raises(ValueError, match="--train_dir"):
            runner.main([*data_args(image_data), *RUN, "--output_dir", str(output), "--overwrite_output_dir", "true"])
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="--model_name_or_path"):
        runner.main([*data_args(image_data), *RUN, "--model_name_or_path", str(model), "--output_dir", str(model),
                     "--overwrite_output_dir", "true"])
    assert listing(model) == {"config.json": b"{}"}


@pytest.mark.parametrize("case", ["missing_checkpoint", "no_samples", "corrupt_jpeg"])
def test_a_failed_training_run_leaves_nothing_behind(runner, image_data, tmp_path, case):
    data, flag = data_args(image_data), None
    extra = []
    if case == "missing_checkpoint":
        extra, flag = ["--resume_from_checkpoint", str(tmp_path / "nope")], "--resume_from_checkpoint"
    elif case == "no_samples":
        extra, flag = ["--max_train_samples", "0"], "--max_train_samples"
    else:
        root = tmp_path / "data"
        write_images(root / "train")
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
        data, flag = ["--train_dir", str(root / "train"), "--train_val_split", "0.4"], "--train_dir"
    out = tmp_path / "runs" / "out"
    with pytest.raises(ValueError, match=flag) as caught:
        runner.main([*data, *RUN, "--output_dir", str(out), *extra])
    if case == "corrupt_jpeg":
        assert "broken.jpg" in str(caught.value)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------ training script: clear errors (#24.11)
def _bad_data(root: Path, case: str) -> list[str]:
    train, validation = root / "train", root / "validation"
    if case == "empty":
        train.mkdir(parents=True)
    elif case == "text_only":
        (train / "cat").mkdir(parents=True)
        (train / "cat" / "readme.txt").write_text("no images here")
    elif case == "one_class":
        write_images(train, classes=("cat",))
    elif case == "flat":
        write_images(root, classes=("train",))
    elif case == "other_validation_classes":
        write_images(train)
        write_images(validation, classes=("cat", "horse"))
        return ["--train_dir", str(train), "--validation_dir", str(validation)]
    return ["--train_dir", str(train)]


@pytest.mark.parametrize("case,flag", [("empty", "--train_dir"), ("text_only", "--train_dir"),
                                       ("one_class", "--train_dir"), ("flat", "--train_dir"),
                                       ("other_validation_classes", "--validation_dir")])
def test_bad_image_folders_name_their_argument(runner, tmp_path, case, flag):
    argv = _bad_data(tmp_path / "data", case)
    with pytest.raises(ValueError, match=flag):
        runner.main([*argv, *RUN, "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["/nope/dart", "nobody-here/no-such-dart-model"])
def test_a_model_that_does_not_exist_names_its_argument(runner, image_data, tmp_path, monkeypatch, model):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: no network attempts
    with pytest.raises(ValueError, match="--model_name_or_path"):
        runner.main([*data_args(image_data), *RUN, "--model_name_or_path", model, "--output_dir",
                     str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.floats(allow_nan=True, allow_infinity=True))
def test_train_val_split_is_accepted_or_named(runner, image_data, split):
    argv = [*data_args(image_data), f"--train_val_split={split!r}", "--output_dir", "unused"]  # "=": "-inf" is no flag
    try:
        _, data, _ = runner.parse_args(argv)
    except ValueError as error:
        assert "--train_val_split" in str(error)
        assert not 0 < split < 1
    else:
        assert 0 < split < 1 and data.train_val_split == split


def test_the_training_cli_prints_one_line_and_exits_2(runner, tmp_path, capsys):
    argv = _bad_data(tmp_path / "data", "one_class")
    code = runner.cli([*argv, *RUN, "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--train_dir" in err and err.startswith("error: ")


@pytest.mark.parametrize("extra,fragments", [
    (["--config_overrides", "num_token=8"], ["`--config_overrides`", "'num_token'", "'num_tokens'"]),
    (["--config_overrides", "freeze_scorer_trunk=maybe"], ["`--config_overrides`", "freeze_scorer_trunk", "bool"]),
    (["--num_tokens", "0"], ["`--num_tokens`", "positive"]),
    (["--hflip_probability", "1.5"], ["`--hflip_probability`", "[0, 1]"]),
    (["--hflip_probability", "nan"], ["`--hflip_probability`"]),
    (["--crop_pct", "0"], ["`--crop_pct`", "(0, 1]"]),
    (["--crop_pct", "1.5"], ["`--crop_pct`"]),
    (["--label_smoothing_factor", "1.5"], ["`--label_smoothing_factor`", "[0, 1)"]),
    (["--preset", "nope"], ["`--preset`", "'nope'", "deit_imagenet", "quickstart"]),
])
def test_bad_training_arguments_are_refused_before_the_data_are_read(runner, image_data, tmp_path, capsys, monkeypatch,
                                                                      extra, fragments):
    """Each bad argument stops the script with one line naming it and exit code 2, before any data is loaded."""
    monkeypatch.setattr(runner, "load_dataset", lambda *args, **kwargs: pytest.fail("the data were read"))
    argv = [*data_args(image_data), "--config_overrides", TINY_MODEL, "--output_dir", tmp_path / "out", *extra]
    code, err = exit_code(runner.cli, argv, capsys)
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not (tmp_path / "out").exists()


def test_config_overrides_on_a_loaded_config_are_refused_naming_the_flag(runner):
    """The `--model_name_or_path` path: the overrides are set on the loaded config, with the same messages."""
    from modeling_dart import DartConfig

    def tiny():
        return DartConfig(image_size=32, patch_size=8, score_grid_size=4, num_tokens=16, hidden_size=16,
                          num_hidden_layers=1, num_attention_heads=2)

    for overrides, flags, fragments in (
        ({"num_token": 8}, None, ["`--config_overrides`", "'num_tokens'"]),
        ({"freeze_scorer_trunk": "maybe"}, None, ["`--config_overrides`", "freeze_scorer_trunk"]),
        ({"num_tokens": 0}, {"num_tokens": "--num_tokens"}, ["`--num_tokens`", "positive"]),
        ({"hidden_size": 15}, None, ["`--config_overrides`", "hidden_size"]),
    ):
        with pytest.raises(conversion_utils.UsageError) as caught:
            runner.apply_config_overrides(tiny(), overrides, flags)
        for fragment in fragments:
            assert fragment in str(caught.value), f"{fragment!r} not in {caught.value}"
    config = tiny()
    runner.apply_config_overrides(config, {"num_tokens": 12, "freeze_scorer_trunk": False})
    assert config.num_tokens == 12 and config.freeze_scorer_trunk is False


def test_one_line_reads_the_message_a_dataloader_worker_wraps():
    message = ("Caught UsageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nmodeling_dart.conversion_utils.UsageError: `--train_dir`: cannot read')
    assert conversion_utils.one_line(conversion_utils.UsageError(message)) == "`--train_dir`: cannot read"


# ----------------------------------------------------------------------------------------- video training script
def test_video_training_refuses_a_non_empty_output_dir(video_runner, tmp_path):
    data = video_runner.make_demo_dataset(tmp_path / "data", clips_per_class=1, frames_per_clip=4, size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"the previous model")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        video_runner.main(["--preset", "tiny", "--train_dir", str(data / "train"), "--do_eval", "false",
                           "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--train_dir"):
        video_runner.main(["--preset", "tiny", "--train_dir", str(data / "train"), "--do_eval", "false",
                           "--output_dir", str(data), "--overwrite_output_dir", "true"])
    assert listing(out) == {"model.safetensors": b"the previous model"}
    with pytest.raises(ValueError, match="--make_demo_data"):
        video_runner.main(["--make_demo_data", str(out)])
    assert listing(out) == {"model.safetensors": b"the previous model"}


def test_video_training_refuses_an_empty_class_folder(video_runner, tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    code = video_runner.cli(["--preset", "tiny", "--train_dir", str(tmp_path / "train"), "--do_eval", "false",
                             "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--train_dir" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
