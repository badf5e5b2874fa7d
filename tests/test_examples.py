"""The fine-tuning example: a few Trainer steps on the bundled data (one process, then two with `accelerate launch`),
the saved folder (weights, label maps, processor, model card), reloading it with `pipeline`, and the script's
helpers (presets, config overrides, freezing the scorer trunk, the offline accuracy metric)."""

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
TINY_RUN = ["--preset", "quickstart", "--max_train_samples", "40", "--max_eval_samples", "20",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "20", "--logging_steps", "1",
            "--scorer_pretrain_steps", "2"]


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("hf_home")
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(home),
        "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.fixture(scope="module")
def runner(offline_env, monkeypatch_module):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME"):
        monkeypatch_module.setenv(key, offline_env[key])
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("run_image_classification")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def _run(command: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_saved_folder(folder: Path) -> dict:
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "all_results.json"):
        assert (folder / name).is_file(), f"{name} missing from {sorted(p.name for p in folder.iterdir())}"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "dart"
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    assert config["label2id"] == {name: i for i, name in enumerate(CLASSES)}
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "DartImageProcessor"
    assert processor["crop_size"] == {"height": config["image_size"], "width": config["image_size"]}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n")
    metadata = card.split("---\n")[1]
    assert "library_name: transformers" in metadata and "pipeline_tag: image-classification" in metadata
    assert "eval_accuracy" in card
    return config


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, offline_env) -> Path:
    output = tmp_path_factory.mktemp("run") / "dart-tiny"
    result = _run([sys.executable, str(SCRIPT), *TINY_RUN, "--max_steps", "3", "--output_dir", str(output)], offline_env)
    assert "eval_accuracy" in result.stdout
    return output


def test_single_process_run_saves_a_complete_folder(trained_folder):
    config = _check_saved_folder(trained_folder)
    assert config["freeze_scorer_trunk"] is True and config["num_tokens"] == 36 and config["image_size"] == 160
    # the preset names no scorer trunk or head: --scorer_trunk_weights efficientnet_lite0 brings the recommended scorer
    assert (config["scorer_trunk"], config["scorer_head"]) == ("efficientnet_lite0", "mil")
    assert config["token_geometry_embedding"] is True
    assert (config["scorer_trunk_depth"], config["scorer_attention_power"], config["scorer_attention_spread"]) == (
        12, 0.5, 3)
    assert config["scorer_evidence_weight"] == 0.0
    # --scorer_trunk_weights efficientnet_lite0: the trunk holds the packaged ImageNet weights (frozen, kept)
    from tests.test_trunks import lite0_state

    saved = load_file(trained_folder / "model.safetensors")
    assert torch.equal(saved["dart.embeddings.scorer.features.0.0.weight"], lite0_state()["_conv_stem.weight"])
    assert saved["dart.embeddings.scorer.head.embed.weight"].shape == (128, 112)  # depth 12: 112 channels
    assert torch.equal(saved["dart.embeddings.scorer.features.3.block.1.1.running_var"],
                       lite0_state()["_blocks.2._bn1.running_var"])
    processor = json.loads((trained_folder / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == [0.5, 0.5, 0.5] and processor["image_std"] == [0.5, 0.5, 0.5]
    results = json.loads((trained_folder / "all_results.json").read_text())
    assert results["world_size"] == 1 and results["scorer_pretrain_steps"] == 2
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["eval_samples"] == 20 and results["train_samples"] == 40
    state = json.loads((trained_folder / "trainer_state.json").read_text())
    assert state["global_step"] == 3


def test_saved_folder_loads_in_a_pipeline(trained_folder):
    from PIL import Image
    from transformers import pipeline

    import modeling_dart  # noqa: F401

    classifier = pipeline("image-classification", model=str(trained_folder), trust_remote_code=False)
    images = [Image.open(next((DATA / "validation" / name).glob("*.jpg"))) for name in CLASSES[:2]]
    predictions = classifier(images, top_k=3)
    assert len(predictions) == 2
    for prediction in predictions:
        assert len(prediction) == 3 and all(p["label"] in CLASSES for p in prediction)
        assert sum(p["score"] for p in prediction) <= 1.0 + 1e-6


def test_finetune_saved_folder_with_frozen_trunk_and_new_head(trained_folder, tmp_path, offline_env):
    """Start from the saved folder with fewer classes (new head) and the scorer trunk frozen."""
    data = tmp_path / "three_classes"
    for split in ("train", "validation"):
        for name in CLASSES[:3]:
            target = data / split / name
            target.mkdir(parents=True)
            for path in sorted((DATA / split / name).glob("*.jpg"))[:6]:
                shutil.copy(path, target / path.name)
    output = tmp_path / "finetuned"
    _run([sys.executable, str(SCRIPT), "--model_name_or_path", str(trained_folder), "--train_dir", str(data / "train"),
          "--validation_dir", str(data / "validation"), "--ignore_mismatched_sizes", "true",
          "--freeze_scorer_trunk", "true", "--num_tokens", "25", "--output_dir", str(output), "--do_train", "--do_eval",
          "--max_steps", "2", "--per_device_train_batch_size", "6", "--learning_rate", "1e-3", "--report_to", "none",
          "--save_strategy", "no"], offline_env)
    config = json.loads((output / "config.json").read_text())
    assert config["freeze_scorer_trunk"] is True and config["num_tokens"] == 25
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASSES[:3])}
    before, after = load_file(trained_folder / "model.safetensors"), load_file(output / "model.safetensors")
    trunk = [k for k in before if ".scorer.features." in k and "num_batches_tracked" not in k]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # frozen: weights and BN statistics kept
    moved = [k for k in before if k.startswith("dart.encoder.") and not torch.equal(before[k], after[k])]
    assert moved  # the backbone did train
    assert after["classifier.weight"].shape[0] == 3


def test_accelerate_launch_two_processes_on_cpu(tmp_path, offline_env):
    """Two processes write into one temporary folder (each saves its own RNG state into the checkpoints), which the
    main process alone moves into the existing output folder (`--overwrite_output_dir`): the earlier run's results
    are replaced, an unrelated file is kept, and no temporary folder is left."""
    output = tmp_path / "ddp"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    (output / "all_results.json").write_text(json.dumps({"old_metric": 1.0}))
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate CLI not found")
    result = _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                   str(SCRIPT), *TINY_RUN, "--per_device_train_batch_size", "4", "--max_steps", "2",
                   "--save_strategy", "steps", "--save_steps", "2", "--overwrite_output_dir", "true",
                   "--ddp_find_unused_parameters", "false", "--output_dir", str(output)], offline_env, timeout=400)
    assert "world_size: 2" in result.stdout + result.stderr
    _check_saved_folder(output)
    results = json.loads((output / "all_results.json").read_text())
    assert results["world_size"] == 2 and "old_metric" not in results
    assert (output / "notes.txt").read_text() == "mine"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (output / "checkpoint-2").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert state["train_batch_size"] == 4  # per device; the two processes each took their own share of the data


# --------------------------------------------------------------------------------------------- script helpers
def test_preset_comes_first_so_explicit_arguments_win(runner):
    argv = runner.build_argv(["--preset", "quickstart", "--num_train_epochs", "2"])
    assert argv.index("--num_train_epochs") < len(argv) - 2  # the preset's value is there, and ours after it
    _, data_args, training_args = runner.parse_args(
        ["--preset", "quickstart", "--num_train_epochs", "2", "--output_dir", "elsewhere"]
    )
    assert training_args.num_train_epochs == 2 and training_args.output_dir == "elsewhere"
    assert data_args.train_dir.endswith("train") and training_args.remove_unused_columns in (True, False)
    if not torch.cuda.is_available():
        assert training_args.use_cpu
    with pytest.raises(SystemExit):
        runner.build_argv(["--preset", "nope"])


def test_config_overrides_and_derived_fields(runner, tmp_path):
    overrides = runner.parse_config_overrides("hidden_size=64,freeze_scorer_trunk=false,scorer=uniform,drop_path_rate=0.1")
    assert overrides == {"hidden_size": 64, "freeze_scorer_trunk": False, "scorer": "uniform", "drop_path_rate": 0.1}
    with pytest.raises(ValueError):
        runner.parse_config_overrides("hidden_size")
    from modeling_dart import DartConfig

    DartConfig(hidden_size=192, num_attention_heads=4, image_size=96, patch_size=8, score_grid_size=6, num_tokens=36).save_pretrained(tmp_path)
    config = runner.build_config_from_scratch(str(tmp_path), {"hidden_size": 64}, num_labels=4)
    assert config.hidden_size == 64 and config.intermediate_size == 256 and config.time_step_rank == 4
    assert config.image_size == 96 and config.num_labels == 4


def test_packaged_trunk_weights_bring_the_recommended_scorer_to_a_new_model(runner, tmp_path):
    """`--scorer_trunk_weights efficientnet_lite0` alone gives a new model the Lite0 trunk, frozen, the saliency head
    (token models: the mil head and the token geometry embedding); the user's own fields win, and a chosen trunk or a
    uniform scorer turns the defaults off."""
    from modeling_dart import DartConfig

    tiny = {"image_size": 64, "patch_size": 8, "score_grid_size": 8, "num_tokens": 16, "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 4}
    config = runner.build_config_from_scratch(None, dict(tiny), scorer_trunk_weights="efficientnet_lite0")
    assert (config.scorer, config.scorer_trunk, config.scorer_head) == ("learned", "efficientnet_lite0", "mil")
    assert config.freeze_scorer_trunk is True and config.token_geometry_embedding is True
    # token models: the mil head on the trunk cut at depth 12, its attention averaged over 3x3 cells and square-rooted
    assert (config.scorer_trunk_depth, config.scorer_attention_power, config.scorer_attention_spread) == (12, 0.5, 3)
    assert config.scorer_evidence_weight == 0.0
    # a user who asks for the evidence head's pull keeps the saliency head it trains (the mil head refuses it)
    config = runner.build_config_from_scratch(None, {**tiny, "scorer_evidence_weight": 3.0},
                                              scorer_trunk_weights="efficientnet_lite0")
    assert (config.scorer_head, config.scorer_evidence_weight, config.scorer_trunk_depth) == ("saliency", 3.0, 12)
    # without the weights: the config's own defaults (MobileNetV3-Small, head v1, no geometry, no evidence head)
    plain = runner.build_config_from_scratch(None, dict(tiny))
    assert (plain.scorer_trunk, plain.scorer_head, plain.token_geometry_embedding) == (
        "mobilenet_v3_small", "v1", False)
    assert (plain.scorer_trunk_depth, plain.scorer_evidence_weight) == (None, 0.0)
    # the user's fields win over the recommended ones
    config = runner.build_config_from_scratch(
        None, {**tiny, "scorer_head": "v2", "token_geometry_embedding": False, "scorer_trunk_depth": 8,
               "scorer_evidence_weight": 0.0}, scorer_trunk_weights="efficientnet_lite0")
    assert (config.scorer_trunk, config.scorer_head, config.token_geometry_embedding) == (
        "efficientnet_lite0", "v2", False)
    assert (config.scorer_trunk_depth, config.scorer_evidence_weight) == (8, 0.0)
    # a trunk of the user's choosing, a uniform scorer, or a .pth file: nothing implied
    for extra, weights in (({"scorer_trunk": "mobilenet_v3_small"}, "efficientnet_lite0"),
                           ({"scorer": "uniform"}, "efficientnet_lite0"), ({}, str(tmp_path / "trunk.pth"))):
        config = runner.build_config_from_scratch(None, {**tiny, **extra}, scorer_trunk_weights=weights)
        assert config.scorer_head == "v1" and config.token_geometry_embedding is False, extra
        assert config.scorer_evidence_weight == 0.0 and config.scorer_trunk_depth is None, extra
    # --config_name's own trunk stands too
    DartConfig(**tiny, scorer_trunk="mobilenet_v3_large").save_pretrained(tmp_path / "named")
    config = runner.build_config_from_scratch(str(tmp_path / "named"), {}, scorer_trunk_weights="efficientnet_lite0")
    assert (config.scorer_trunk, config.scorer_head) == ("mobilenet_v3_large", "v1")
    # the reshaper gets the scorer (it has no tokens, so no geometry embedding)
    reshaper = runner.build_config_from_scratch(None, {"image_size": 64, "score_grid_size": 8}, model_type="dart_reshaper",
                                                backbone_config="rmt_t3", scorer_trunk_weights="efficientnet_lite0")
    assert (reshaper.scorer_trunk, reshaper.scorer_head, reshaper.freeze_scorer_trunk) == (
        "efficientnet_lite0", "saliency", True)
    assert not hasattr(reshaper, "token_geometry_embedding")
    assert not hasattr(reshaper, "scorer_evidence_weight") and reshaper.scorer_trunk_depth is None


def _evidence_model():
    from modeling_dart import DartConfig, DartForImageClassification

    torch.manual_seed(0)
    return DartForImageClassification(DartConfig(
        image_size=64, patch_size=8, score_grid_size=4, num_tokens=16, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_labels=3, scorer_trunk="efficientnet_lite0", scorer_head="saliency",
        scorer_trunk_depth=5, scorer_evidence_weight=1.0))


def _mil_model():
    from modeling_dart import DartConfig, DartForImageClassification

    torch.manual_seed(0)
    return DartForImageClassification(DartConfig(
        image_size=64, patch_size=8, score_grid_size=8, num_tokens=16, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=4, num_labels=3, scorer_trunk="efficientnet_lite0", scorer_head="mil",
        scorer_trunk_depth=5))


def _trainer(runner, tmp_path, model, **options):
    training_args = runner.DartTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.05,
                                                 report_to="none", use_cpu=True, **options)
    return runner.DartTrainer(model=model, args=training_args, mixup=None)


def test_scorer_learning_rate_default_and_its_own_optimizer_group(runner, tmp_path):
    """`--scorer_learning_rate`: by default 10x --learning_rate for a new token model with the evidence head, else
    the same; given, the scorer's trainable parameters and the evidence head form one group at that rate without
    weight decay, and every other trainable parameter keeps --learning_rate and the Trainer's decay rule."""
    for name, scorer in (("dart.embeddings.scorer.head.fc1.weight", True), ("evidence_head.embed.weight", True),
                         ("_fsdp_wrapped_module.evidence_head.norm.bias", True), ("classifier.weight", False),
                         ("dart.embeddings.projection.weight", False), ("other_evidence_head.weight", False)):
        assert runner.is_scorer_parameter(name) is scorer, name
    model = _evidence_model()
    assert runner.default_scorer_learning_rate(1e-3, model.config, new_model=True) == pytest.approx(1e-2)
    assert runner.default_scorer_learning_rate(1e-3, model.config, new_model=False) == 1e-3
    model.config.scorer_evidence_weight = 0.0
    assert runner.default_scorer_learning_rate(1e-3, model.config, new_model=True) == 1e-3
    model.config.scorer_evidence_weight = 1.0
    mil = _mil_model().config  # the recommended scorer: 3x
    assert runner.default_scorer_learning_rate(1e-3, mil, new_model=True) == pytest.approx(3e-3)
    assert runner.default_scorer_learning_rate(1e-3, mil, new_model=False) == 1e-3
    with pytest.raises(ValueError, match="--scorer_learning_rate"):
        runner.DartTrainingArguments(output_dir=str(tmp_path), scorer_learning_rate=-1.0)

    optimizer = _trainer(runner, tmp_path, model, scorer_learning_rate=0.02).create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    seen = set()
    for group in optimizer.param_groups:
        group_names = {names[id(p)] for p in group["params"]}
        seen |= group_names
        scorer = {n for n in group_names if ".scorer." in n or n.startswith("evidence_head.")}
        if scorer:
            assert scorer == group_names and group["lr"] == 0.02 and group["weight_decay"] == 0.0
        else:
            assert group["lr"] == 1e-3
            assert group["weight_decay"] == (0.05 if "classifier.weight" in group_names else 0.0)
    assert seen == trainable
    assert {n for n in trainable if n.startswith("evidence_head.")} and {n for n in trainable if ".scorer.head." in n}
    assert not any(".scorer.features." in n for n in trainable)
    # the same rate as --learning_rate: the Trainer's own optimizer, one rate
    plain = _trainer(runner, tmp_path, _evidence_model(), scorer_learning_rate=1e-3).create_optimizer()
    assert {group["lr"] for group in plain.param_groups} == {1e-3}


def test_scorer_pretraining_default_and_what_it_trains(runner, tmp_path):
    """`--scorer_pretrain_steps`: by default `DEFAULT_SCORER_PRETRAIN_STEPS` for a new token model with the evidence
    head, else 0; `pretrain_scorer` trains the scorer and the evidence head on the Trainer's training batches and
    leaves every other weight as it was."""
    model = _evidence_model()
    assert runner.DEFAULT_SCORER_PRETRAIN_STEPS > 0
    assert runner.default_scorer_pretrain_steps(model.config, new_model=True) == runner.DEFAULT_SCORER_PRETRAIN_STEPS
    assert runner.default_scorer_pretrain_steps(model.config, new_model=False) == 0
    model.config.scorer_evidence_weight = 0.0
    assert runner.default_scorer_pretrain_steps(model.config, new_model=True) == 0
    model.config.scorer_evidence_weight = 1.0
    mil = _mil_model().config
    assert runner.default_scorer_pretrain_steps(mil, new_model=True) == runner.DEFAULT_SCORER_PRETRAIN_STEPS
    assert runner.default_scorer_pretrain_steps(mil, new_model=False) == 0
    with pytest.raises(ValueError, match="--scorer_pretrain_steps"):
        runner.DartTrainingArguments(output_dir=str(tmp_path), scorer_pretrain_steps=-1)

    generator = torch.Generator().manual_seed(0)
    dataset = [{"pixel_values": torch.randn(3, 64, 64, generator=generator), "labels": i % 3} for i in range(8)]
    training_args = runner.DartTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to="none",
                                                 use_cpu=True, per_device_train_batch_size=4,
                                                 scorer_learning_rate=1e-2)
    trainer = runner.DartTrainer(model=model, args=training_args, train_dataset=dataset, mixup=None)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    losses = runner.pretrain_scorer(trainer, 3)  # two batches per pass over the data: the second pass starts again
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    assert {n for n in changed if n.startswith("evidence_head.")} and {n for n in changed if ".scorer.head." in n}
    assert all(runner.is_scorer_parameter(n) and ".scorer.features." not in n for n in changed), changed


def test_scorer_pretraining_is_refused_without_the_evidence_head(runner, tmp_path):
    """A model without the evidence head: asking for the pre-training is a usage error, raised before any
    training."""
    no_head = ",".join(f"{k}={v}" for k, v in {**runner.QUICKSTART_CONFIG, "scorer_head": "saliency"}.items())
    with pytest.raises(ValueError, match="--scorer_pretrain_steps.*scorer_evidence_weight"):
        runner.main([*TINY_RUN, "--config_overrides", no_head, "--scorer_pretrain_steps", "5",
                     "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "model.safetensors").exists()
    # with the evidence head but a scorer rate of 0, the pre-training could not move the scorer
    with pytest.raises(ValueError, match="--scorer_pretrain_steps.*--scorer_learning_rate"):
        runner.main([*TINY_RUN, "--config_overrides", "scorer_evidence_weight=1.0,scorer_trunk_depth=5",
                     "--scorer_learning_rate", "0", "--output_dir", str(tmp_path / "zero")])
    assert not (tmp_path / "zero" / "model.safetensors").exists()


def test_a_new_token_model_trains_with_the_recommended_scorer_end_to_end(runner, tmp_path):
    """A new token model from `--scorer_trunk_weights efficientnet_lite0` alone: the mil head on the trunk cut at
    depth 12, its pre-training (`--scorer_pretrain_steps`, here 2) before the Trainer's steps, and a saved folder that
    holds the head and reloads."""
    from modeling_dart import DartForImageClassification

    tiny = "image_size=64,patch_size=8,score_grid_size=8,num_tokens=16,hidden_size=32,num_hidden_layers=1,num_attention_heads=4"
    output = tmp_path / "out"
    runner.main(["--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation"),
                 "--config_overrides", tiny, "--scorer_trunk_weights", "efficientnet_lite0",
                 "--max_train_samples", "16", "--max_eval_samples", "8", "--per_device_train_batch_size", "8",
                 "--per_device_eval_batch_size", "8", "--max_steps", "2", "--scorer_pretrain_steps", "2",
                 "--do_train", "true", "--do_eval", "true", "--save_strategy", "no", "--report_to", "none",
                 "--use_cpu", "true", "--output_dir", str(output)])
    config = json.loads((output / "config.json").read_text())
    assert (config["scorer_head"], config["scorer_trunk_depth"], config["scorer_attention_power"],
            config["scorer_attention_spread"]) == ("mil", 12, 0.5, 3)
    results = json.loads((output / "all_results.json").read_text())
    assert results["scorer_pretrain_steps"] == 2
    assert math.isfinite(results["scorer_pretrain_loss_first"]) and math.isfinite(results["scorer_pretrain_loss_last"])
    saved = load_file(output / "model.safetensors")
    assert saved["dart.embeddings.scorer.head.embed.weight"].shape == (128, 112)  # depth 12: 112 channels
    assert not any(key.startswith("evidence_head.") for key in saved)
    reloaded = DartForImageClassification.from_pretrained(output)
    assert reloaded.evidence_module() is reloaded.dart.embeddings.scorer.head
    assert torch.equal(reloaded.dart.embeddings.scorer.head.embed.weight, saved["dart.embeddings.scorer.head.embed.weight"])


def test_label_smoothing_keeps_the_evidence_loss(runner, tmp_path):
    """The Trainer computes a smoothed loss without handing the labels to the model; the evidence head's part of the
    loss is added to it (a model without the head gets the smoothed loss alone)."""
    import torch.nn.functional as F

    model = _evidence_model().train()
    trainer = _trainer(runner, tmp_path, model, label_smoothing_factor=0.1)
    pixels, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    loss = trainer.compute_loss(model, {"pixel_values": pixels, "labels": labels})
    with torch.no_grad():
        outputs = model(pixel_values=pixels, labels=labels)
    smoothed = F.cross_entropy(outputs.logits, labels, label_smoothing=0.1)
    assert outputs.evidence_loss > 0
    torch.testing.assert_close(loss.detach(), smoothed + outputs.evidence_loss, rtol=1e-5, atol=1e-6)


def test_set_scorer_trunk_frozen(runner):
    from modeling_dart import DartConfig, DartForImageClassification

    model = DartForImageClassification(DartConfig(image_size=64, patch_size=8, score_grid_size=4, num_tokens=16,
                                                  hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  freeze_scorer_trunk=True))
    scorer = model.dart.embeddings.scorer
    assert not any(p.requires_grad for p in scorer.features.parameters())
    runner.set_scorer_trunk_frozen(model, False)
    model.train()
    assert all(p.requires_grad for p in scorer.features.parameters()) and scorer.features.training
    assert model.config.freeze_scorer_trunk is False
    runner.set_scorer_trunk_frozen(model, True)
    model.train()
    assert not any(p.requires_grad for p in scorer.features.parameters()) and not scorer.features.training


def test_accuracy_metric_falls_back_to_the_local_module(runner):
    metric = runner.load_accuracy_metric()  # HF_HUB_OFFLINE=1: the local module folder
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2]) == {"accuracy": 0.75}


def test_push_to_hub_uploads_the_trained_folder_in_one_commit(runner, tmp_path, monkeypatch):
    """The Hub is unreachable here: the Trainer's push is checked up to the HTTP boundary (`create_repo`, the model
    card's YAML check and `create_commit` record what they would send; `upload_folder` runs for real and builds the
    operations)."""
    from huggingface_hub import HfApi, RepoUrl

    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["repo"] = repo_id
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_create_commit(self, repo_id, operations, commit_message, **kwargs):
        calls.setdefault("commits", []).append((repo_id, sorted(op.path_in_repo for op in operations)))

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setattr(HfApi, "_validate_yaml", lambda self, content, **kw: calls.setdefault("card", content))
    # with hf_xet installed `upload_folder` streams through its own pipeline of requests; take the single-commit path
    monkeypatch.setattr("huggingface_hub.hf_api.is_xet_available", lambda: False)
    output = tmp_path / "pushed"
    runner.main([*TINY_RUN, "--max_steps", "1", "--output_dir", str(output), "--push_to_hub", "true",
                 "--hub_model_id", "my-org/dart-sparse-fashion", "--hub_token", "hf_not_a_real_token"])
    assert calls["repo"] == "my-org/dart-sparse-fashion"
    repo_id, files = calls["commits"][-1]
    assert repo_id == "my-org/dart-sparse-fashion"
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= set(files)
    assert "library_name: transformers" in calls["card"] and "pipeline_tag: image-classification" in calls["card"]


def test_same_seed_same_run(runner, tmp_path):
    """Augmentation draws from the run's seed: repeating a command repeats the training exactly."""
    metrics = [runner.main([*TINY_RUN, "--max_steps", "2", "--output_dir", str(tmp_path / f"run{i}"), "--seed", "5"])
               for i in range(2)]
    assert metrics[0]["train_loss"] == metrics[1]["train_loss"]
    assert metrics[0]["eval_accuracy"] == metrics[1]["eval_accuracy"]
    first, second = (load_file(tmp_path / f"run{i}" / "model.safetensors") for i in range(2))
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_quickstart_runs_end_to_end(runner, tmp_path, capsys):
    """The main job on the bundled split (a few steps): pipeline demo, the picture with six columns over two rows, and
    the count of images whose finest token lies on the article."""
    from PIL import Image

    import quickstart

    output = tmp_path / "qs"
    metrics = quickstart.main([
        "--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation"), "--max_steps", "2",
        "--max_train_samples", "32", "--max_eval_samples", "20", "--per_device_train_batch_size", "8",
        "--output_dir", str(output), "--disable_tqdm", "true",
    ])
    printed = capsys.readouterr().out
    assert "pipeline('image-classification') on validation images:" in printed and "/6 correct" in printed
    assert "the finest token lies on the article in" in printed and "validation accuracy:" in printed
    assert 0 <= metrics["finest_token_on_article"] <= 6 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    picture = Image.open(output / "token_regions.png")
    assert picture.width > 6 * 240 and picture.height > 2 * 240
    # the demo's scorer: the saliency head at trunk depth 4 in place of the recommended mil head (QUICKSTART_DEMO_SCORER)
    config = json.loads((output / "config.json").read_text())
    assert (config["scorer_trunk"], config["scorer_head"]) == ("efficientnet_lite0", "saliency")
    assert (config["scorer_trunk_depth"], config["scorer_evidence_weight"], config["num_tokens"]) == (4, 0.0, 36)
    assert "scorer_pretrain_steps" not in json.loads((output / "all_results.json").read_text())


def test_quickstart_writes_its_canvases_once(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    import quickstart

    counts = {"train": 12, "validation": 6}
    quickstart.write_data(tmp_path, counts)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.jpg"))
    assert len(files) == 18
    boxes = json.loads((tmp_path / "boxes_validation.json").read_text())
    assert len(boxes) == 6 and all(len(box) == 4 for box in boxes.values())
    stamp = (tmp_path / "canvases.json").stat().st_mtime_ns
    quickstart.write_data(tmp_path, counts)  # the same counts: nothing rewritten
    assert (tmp_path / "canvases.json").stat().st_mtime_ns == stamp
