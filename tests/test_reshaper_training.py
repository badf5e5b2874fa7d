"""Training DART's image reshaper (`DartReshaperForImageClassification`, #25 item 6) with
`examples/run_image_classification.py` on the bundled data: a tiny RMT behind a reshaper scored by the packaged ImageNet
EfficientNet-Lite0 trunk (frozen), a tiny ConvNeXt behind one scored by a trainable MobileNetV3-Small trunk, in one
process and in two (`accelerate launch`); the saved folder, reloaded with `AutoModelForImageClassification` and its
saved processor, reproduces the run's own evaluation on the validation split; a saved reshaper folder fine-tunes with a
new head; bad values of the reshaper flags are refused on one line that names the flag.

The reference for a reloaded folder is the Trainer's evaluation inside the run (loss and accuracy over all 100
validation images in one batch), recomputed here with PIL, the saved processor and `torch.nn.functional.cross_entropy`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
SCRIPT = EXAMPLES / "run_image_classification.py"
DATA = EXAMPLES / "data" / "sparse_fashion"
CLASSES = sorted(p.name for p in (DATA / "train").iterdir() if p.is_dir())
VALIDATION = sorted((DATA / "validation").glob("*/*.jpg"))

TINY_RMT = json.dumps({"model_type": "rmt", "embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1],
                       "num_heads": [2, 2, 3, 4], "heads_ranges": [4, 4, 6, 6], "mlp_ratios": [2, 2, 2, 2],
                       "projection": 16})
TINY_CONVNEXT = json.dumps({"model_type": "convnext", "num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]})
# 64-pixel canvases warped to 32x32 from an 8x8 score grid
RESHAPER = "image_size=64,patch_size=8,score_grid_size=8"
LITE0 = f"{RESHAPER},scorer_trunk=efficientnet_lite0,scorer_head=saliency"
MOBILENET = f"{RESHAPER},scorer_trunk=mobilenet_v3_small,scorer_trunk_depth=4,freeze_scorer_trunk=false"
DATA_ARGS = ["--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation")]
RUN = [*DATA_ARGS, "--model_type", "dart_reshaper", "--crop_pct", "1.0", "--do_train", "true", "--do_eval", "true",
       "--max_train_samples", "40", "--per_device_eval_batch_size", "100", "--learning_rate", "1e-3",
       "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "3"]


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="module")
def runner(offline_env):
    patch = pytest.MonkeyPatch()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME"):
        patch.setenv(key, offline_env[key])
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("run_image_classification")
    finally:
        sys.path.remove(str(EXAMPLES))
        patch.undo()


def _run(command: list[str], env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess:
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(command)}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n"
                                    f"{result.stderr[-6000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_run(folder: Path, backbone: str, steps: int, world_size: int = 1) -> dict:
    """The saved folder of a reshaper run: its files, config, label maps and metrics; returns `all_results.json`."""
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"):
        assert (folder / name).is_file(), f"{name} missing from {sorted(p.name for p in folder.iterdir())}"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "dart_reshaper" and config["backbone_config"]["model_type"] == backbone
    assert config["architectures"] == ["DartReshaperForImageClassification"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    assert config["backbone_config"]["id2label"] == config["id2label"]  # the classifier's head has the 10 classes
    card = (folder / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "dart-reshaper" in card and "eval_accuracy" in card
    results = json.loads((folder / "all_results.json").read_text())
    assert results["world_size"] == world_size and results["eval_samples"] == len(VALIDATION)
    assert math.isfinite(results["train_loss"]) and math.isfinite(results["eval_loss"])
    assert 0.0 <= results["eval_accuracy"] <= 1.0
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == steps and all(math.isfinite(loss) for loss in losses)
    return results


def reload_and_evaluate(folder: Path) -> tuple[float, int, torch.Tensor]:
    """`(loss, number of correct predictions, logits)` of the folder reloaded with the Auto classes on every validation
    image, in one batch (the run's evaluation batch)."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import modeling_dart  # noqa: F401  (registers the model types)

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model).__name__ == "DartReshaperForImageClassification"
    processor = AutoImageProcessor.from_pretrained(folder)
    images = []
    for path in VALIDATION:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([model.config.label2id[path.parent.name] for path in VALIDATION])
    with torch.no_grad():
        logits = model(pixel_values).logits
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    correct = int((logits.argmax(-1) == labels).sum())
    return loss, correct, logits


def assert_reproduces_the_run(folder: Path, results: dict) -> None:
    loss, correct, logits = reload_and_evaluate(folder)
    assert logits.shape == (len(VALIDATION), len(CLASSES)) and torch.isfinite(logits).all()
    assert loss == pytest.approx(results["eval_loss"], rel=1e-5, abs=1e-6)
    assert correct == round(results["eval_accuracy"] * len(VALIDATION))


@pytest.fixture(scope="module")
def rmt_run(tmp_path_factory, offline_env) -> Path:
    """A tiny RMT behind a reshaper scored by the frozen ImageNet Lite0 trunk, 3 steps in its own process."""
    from tests.test_trunks import lite0_file

    lite0_file()  # skipped with the reason when the `pretrained` extra is missing (a failure under CI=true)
    output = tmp_path_factory.mktemp("reshaper") / "rmt"
    _run([sys.executable, str(SCRIPT), *RUN, "--backbone_config", TINY_RMT, "--config_overrides", LITE0,
          "--scorer_trunk_weights", "efficientnet_lite0", "--per_device_train_batch_size", "8", "--max_steps", "3",
          "--output_dir", str(output)], offline_env)
    return output


def test_rmt_reshaper_trains_in_one_process_and_its_folder_reproduces_the_evaluation(rmt_run):
    from tests.test_trunks import lite0_state

    results = check_run(rmt_run, "rmt", steps=3)
    config = json.loads((rmt_run / "config.json").read_text())
    assert (config["scorer_trunk"], config["scorer_head"], config["freeze_scorer_trunk"]) == (
        "efficientnet_lite0", "saliency", True)
    assert config["backbone_config"]["embed_dims"] == [8, 16, 24, 32]
    saved = load_file(rmt_run / "model.safetensors")
    # the frozen trunk still holds the packaged ImageNet weights and statistics
    assert torch.equal(saved["reshaper.scorer.features.0.0.weight"], lite0_state()["_conv_stem.weight"])
    assert torch.equal(saved["reshaper.scorer.features.3.block.1.1.running_var"],
                       lite0_state()["_blocks.2._bn1.running_var"])
    assert_reproduces_the_run(rmt_run, results)


def test_convnext_reshaper_with_a_trainable_trunk_trains_in_one_process(runner, tmp_path, monkeypatch):
    """A ConvNeXt behind the reshaper; `--drop_path_rate` sets the classifier's rate; the scorer's MobileNetV3 trunk
    and head train (their weights move from the ones the model was built with)."""
    from transformers import AutoConfig

    import modeling_dart  # noqa: F401

    built = {}
    describe = runner.describe_model

    def keep_initial_weights(model):  # called once on the built model, before training
        built.update({key: value.detach().clone() for key, value in model.state_dict().items()})
        return describe(model)

    monkeypatch.setattr(runner, "describe_model", keep_initial_weights)
    output = tmp_path / "convnext"
    runner.main([*RUN, "--backbone_config", TINY_CONVNEXT, "--config_overrides", MOBILENET, "--drop_path_rate", "0.1",
                 "--per_device_train_batch_size", "8", "--max_steps", "2", "--output_dir", str(output)])
    results = check_run(output, "convnext", steps=2)
    config = AutoConfig.from_pretrained(output)
    assert config.backbone_config.drop_path_rate == 0.1 and config.freeze_scorer_trunk is False
    assert config.backbone_config.hidden_sizes == [8, 16]
    saved = load_file(output / "model.safetensors")
    assert saved.keys() == built.keys()
    for part in (".scorer.features.", ".scorer.head.", "backbone.convnext.", "backbone.classifier."):
        weights = [key for key in saved if part in key and key.endswith("weight")]
        assert weights and any(not torch.equal(saved[key], built[key]) for key in weights), part
    assert_reproduces_the_run(output, results)


def test_a_saved_reshaper_folder_fine_tunes_with_a_new_head(runner, rmt_run, tmp_path):
    """From the RMT run's folder on three of its classes: a new 3-way head in the classifier, the frozen trunk kept,
    the classifier's own fields set through `backbone_config.FIELD`."""
    data = tmp_path / "three_classes"
    for split in ("train", "validation"):
        for name in CLASSES[:3]:
            target = data / split / name
            target.mkdir(parents=True)
            for path in sorted((DATA / split / name).glob("*.jpg"))[:4]:
                shutil.copy(path, target / path.name)
    output = tmp_path / "finetuned"
    runner.main(["--model_name_or_path", str(rmt_run), "--train_dir", str(data / "train"), "--validation_dir",
                 str(data / "validation"), "--ignore_mismatched_sizes", "true", "--config_overrides",
                 "backbone_config.drop_path_rate=0.05", "--do_train", "--do_eval", "--max_steps", "1",
                 "--per_device_train_batch_size", "6", "--report_to", "none", "--save_strategy", "no",
                 "--output_dir", str(output)])
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "dart_reshaper"
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES[:3])}
    assert config["backbone_config"]["drop_path_rate"] == 0.05
    before, after = load_file(rmt_run / "model.safetensors"), load_file(output / "model.safetensors")
    heads = [key for key in after if key.startswith("backbone.classifier.")]
    assert heads and all(after[key].shape[0] == 3 for key in heads if key.endswith("weight"))
    trunk = [key for key in before if ".scorer.features." in key and "num_batches_tracked" not in key]
    assert trunk and all(torch.equal(before[key], after[key]) for key in trunk)


def test_convnext_reshaper_trains_in_two_processes(tmp_path, offline_env):
    """`accelerate launch --num_processes 2` on CPU: every parameter takes part in the loss (DDP without unused-
    parameter search), and the main process saves a folder that reproduces the evaluation."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate is not None, "the accelerate CLI is part of the [train] extra"
    output = tmp_path / "ddp"
    result = _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   str(SCRIPT), *RUN, "--backbone_config", TINY_CONVNEXT, "--config_overrides", MOBILENET,
                   "--per_device_train_batch_size", "4", "--max_steps", "2", "--ddp_find_unused_parameters", "false",
                   "--output_dir", str(output)], offline_env)
    assert "world_size: 2" in result.stdout + result.stderr
    results = check_run(output, "convnext", steps=2, world_size=2)
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 4  # per device
    assert_reproduces_the_run(output, results)


# ------------------------------------------------------------------------------------------------- bad input
BAD_FLAGS = [
    (["--backbone_config", "rmt_xl"], "--backbone_config", "is no preset"),
    (["--backbone_config", '{"model_type": "upernet"}'], "--backbone_config", "not an image classifier"),
    (["--backbone_config", '{"model_type": "bert"}'], "--backbone_config", "image classifier"),
    (["--backbone_config", '{"model_type": "rmt", "embed_dimz": [8, 16, 24, 32]}'], "--backbone_config",
     "did you mean 'embed_dims'"),
    (["--backbone_config", '{"model_type": "rmt", "depths": [1]}'], "--backbone_config", "one entry per stage"),
    (["--backbone_config", '{"model_type": "convnext"'], "--backbone_config", "not a valid JSON"),
    (["--backbone_config", '["convnext"]'], "--backbone_config", "is no preset"),
    (["--backbone_config", '{"depths": [1, 1]}'], "--backbone_config", "model_type"),
    (["--backbone_config", '{"model_type": "dart"}'], "--backbone_config", "--config_name"),
    (["--backbone_config", "x" * 400], "--backbone_config", "is no preset"),
    (["--backbone_config", ""], "--backbone_config", "is empty"),
    (["--backbone_config", "/no/such/config.json"], "--backbone_config", "no such folder"),
    (["--model_type", "dart_reshapr"], "--model_type", "dart_reshaper"),
    (["--model_type", "dart", "--backbone_config", "rmt_t3"], "--backbone_config", "dart_reshaper"),
    (["--backbone_config", "rmt_t3", "--num_tokens", "36"], "--num_tokens", "no tokens"),
    (["--backbone_config", "rmt_t3", "--layer_decay", "0.75"], "--layer_decay", "1.0"),
    (["--backbone_config", "rmt_t3", "--config_overrides", "depths=[1,1,1,1]"], "--config_overrides",
     "backbone_config.depths"),
    (["--backbone_config", "rmt_t3", "--config_overrides", "backbone_config.depthz=[1,1,1,1]"],
     "--config_overrides", "did you mean backbone_config.depths"),
    (["--backbone_config", "rmt_t3", "--config_overrides", "backbone_config.depths=[1]"], "--config_overrides",
     "one entry per stage"),
    (["--backbone_config", "rmt_t3", "--config_overrides", "scorer=uniform", "--scorer_trunk_weights",
      "efficientnet_lite0"], "--scorer_trunk_weights", "scorer"),
    (["--backbone_config", "rmt_t3", "--config_overrides", "scorer_trunk=mobilenet_v3_small",
      "--scorer_trunk_weights", "efficientnet_lite0"], "--scorer_trunk_weights", "scorer_trunk=efficientnet_lite0"),
]


@pytest.mark.parametrize("extra, flag, words", BAD_FLAGS, ids=[f"{i}" for i in range(len(BAD_FLAGS))])
def test_bad_reshaper_flags_are_refused_on_one_line_naming_the_flag(runner, tmp_path, capsys, extra, flag, words):
    output = tmp_path / "out"
    capsys.readouterr()
    code = runner.cli([*DATA_ARGS, "--do_train", "--max_steps", "1", "--report_to", "none", "--output_dir",
                       str(output), *extra])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert flag in lines[0] and words in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0]  # a long JSON value is shortened in the message
    assert not output.exists() or not any(output.iterdir())


def test_a_config_name_that_is_no_dart_config_points_to_backbone_config(runner, tmp_path, capsys):
    from transformers import ConvNextConfig

    ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]).save_pretrained(tmp_path / "convnext")
    code = runner.cli([*DATA_ARGS, "--do_train", "--max_steps", "1", "--output_dir", str(tmp_path / "out"),
                       "--config_name", str(tmp_path / "convnext")])
    err = capsys.readouterr().err
    assert code == 2 and "`--config_name`" in err and "--backbone_config" in err, err


def test_backbone_config_reads_presets_files_and_folders(runner, tmp_path):
    """A preset, a config.json file and the folder holding it give the same classifier configuration."""
    from transformers import ConvNextConfig

    from modeling_dart import RmtConfig

    preset = runner.load_backbone_config("rmt_s")
    assert isinstance(preset, RmtConfig) and preset.to_dict() == RmtConfig.from_preset("s").to_dict()
    ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]).save_pretrained(tmp_path)
    for source in (tmp_path, tmp_path / "config.json"):
        config = runner.load_backbone_config(str(source))
        assert isinstance(config, ConvNextConfig) and config.hidden_sizes == [8, 16] and config.depths == [1, 1]
    inline = runner.load_backbone_config(TINY_CONVNEXT)
    assert isinstance(inline, ConvNextConfig) and inline.num_stages == 2


def test_config_overrides_take_lists_for_the_classifiers_per_stage_fields(runner):
    overrides = runner.parse_config_overrides("image_size=64,backbone_config.depths=[1, 1,2,1],output_size=[32,48],"
                                              "backbone_config.layerscales=[false,true,true,true]")
    assert overrides == {"image_size": 64, "backbone_config.depths": [1, 1, 2, 1], "output_size": [32, 48],
                         "backbone_config.layerscales": [False, True, True, True]}
    for spec in ("depths=[1,2", "depths=1]", "depths=[1,[2]"):
        with pytest.raises(ValueError, match="config_overrides.*brackets"):
            runner.parse_config_overrides(spec)
    config = runner.build_config_from_scratch(None, overrides, model_type="dart_reshaper", backbone_config="rmt_t3")
    assert config.output_size == [32, 48] and config.backbone_config.depths == [1, 1, 2, 1]
    assert config.backbone_config.layerscales == [False, True, True, True]
    assert config.backbone_config.embed_dims == runner.RmtConfig.from_preset("t3").embed_dims  # the rest: RMT-T3's
