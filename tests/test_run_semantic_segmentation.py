"""Training DART's reshaper for semantic segmentation (#26 item 4): the mask generator of the bundled canvases
(`examples/data/sparse_canvas_masks.py`), the local mean IoU metric, and `examples/run_semantic_segmentation.py` on the
bundled split in one process and in two (`accelerate launch`), its saved folder reloaded with
`AutoModelForSemanticSegmentation` and `pipeline("image-segmentation")`, the scorer learning from the segmentation
loss, and bad flags refused on one line.
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

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
SCRIPT = EXAMPLES / "run_semantic_segmentation.py"
DATA = EXAMPLES / "data" / "sparse_fashion_seg"
DATA_ARGS = ["--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation")]
# a 3-stage ConvNeXt in a tiny UperNet (the auxiliary head reads the third stage)
TINY_CONVNEXT = json.dumps({"model_type": "convnext", "num_stages": 3, "hidden_sizes": [8, 16, 16],
                            "depths": [1, 1, 1]})
UPERNET = "backbone_config.hidden_size=8,backbone_config.auxiliary_channels=4,backbone_config.pool_scales=[1,2]"
# 128-pixel canvases warped to 64x64 from an 8x8 score grid
RESHAPER = f"image_size=128,patch_size=8,score_grid_size=8,{UPERNET}"

MOBILENET = f"{RESHAPER},scorer_trunk=mobilenet_v3_small,scorer_trunk_depth=4,freeze_scorer_trunk=false"
RUN = [*DATA_ARGS, "--do_train", "true", "--do_eval", "true", "--per_device_train_batch_size", "4",
       "--per_device_eval_batch_size", "16", "--learning_rate", "1e-3", "--logging_steps", "1", "--save_strategy",
       "no", "--report_to", "none", "--seed", "3", "--dataloader_num_workers", "0"]
HEAD = "reshaper.scorer.head."


def _masks_module():
    sys.path.insert(0, str(EXAMPLES / "data"))
    try:
        return importlib.import_module("sparse_canvas_masks")
    finally:
        sys.path.remove(str(EXAMPLES / "data"))


# ------------------------------------------------------------------------------------------- the mask generator
def test_masks_match_the_canvases_and_their_boxes():
    """Item i's image, label and box are `SparseCanvases` item i's; the mask's article pixels carry 1 + label, their
    tight box is the recorded box, and the canvas differs from its background-only twin exactly around them."""
    masks = _masks_module()
    from sparse_canvas import SparseCanvases, make_canvas

    canvases = masks.SegmentationCanvases("validation", 6, seed=5, canvas_size=96)
    plain = SparseCanvases("validation", 6, seed=5, canvas_size=96)
    for index in range(6):
        image, mask, label, box = canvases[index]
        image0, label0, box0 = plain[index]
        assert np.array_equal(image, image0) and label == label0 and box == box0
        assert mask.shape == (96, 96) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1 + label}
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) == box
        # the same draws with an empty article: the background alone; the article changed only pixels in its square
        background, _ = make_canvas(np.zeros((28, 28), np.uint8), np.random.default_rng([5, 1, index]), 96)
        change = np.abs(image.astype(int) - background.astype(int)).max(axis=-1)
        # outside the mask the article's alpha is at most 0.1: a change of at most a tenth of the range (+ rounding)
        assert change[mask == 0].max() <= 26
        # the mask's pixels carry the article: they changed, a clear majority by more than that
        assert (change[mask > 0] > 0).mean() > 0.95 and (change[mask > 0] > 26).mean() > 0.5


def test_masks_are_deterministic_and_the_bundled_split_is_theirs(tmp_path):
    masks = _masks_module()
    first = masks.SegmentationCanvases("train", 3, seed=0, canvas_size=128)
    again = masks.SegmentationCanvases("train", 3, seed=0, canvas_size=128)
    other = masks.SegmentationCanvases("train", 3, seed=1, canvas_size=128)
    for i in range(3):
        assert np.array_equal(first[i][1], again[i][1]) and np.array_equal(first[i][0], again[i][0])
    assert not all(np.array_equal(first[i][1], other[i][1]) for i in range(3))
    for i in range(3):  # the bundled masks are exactly the generator's (PNG is lossless)
        bundled = np.asarray(Image.open(DATA / "train" / "masks" / f"canvas_{i:05d}.png"))
        assert np.array_equal(bundled, first[i][1])
    names = json.loads((DATA / "id2label.json").read_text())
    assert names["0"] == "background" and names["1"] == "t_shirt_top" and names["10"] == "ankle_boot"
    assert len(list((DATA / "train" / "images").iterdir())) == len(list((DATA / "train" / "masks").iterdir())) == 32


def test_local_mean_iou_by_hand():
    import evaluate

    metric = evaluate.load(str(EXAMPLES / "metrics" / "mean_iou"))
    prediction = np.array([[0, 0, 1], [2, 2, 1]])
    reference = np.array([[0, 1, 1], [2, 255, 0]])
    out = metric.compute(predictions=[prediction], references=[reference], num_labels=4, ignore_index=255)
    # class 0: inter 1, union 3; class 1: inter 1, union 3; class 2: inter 1, union 1; class 3 absent
    assert out["mean_iou"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert out["overall_accuracy"] == pytest.approx(3 / 5)
    assert math.isnan(out["per_category_iou"][3])


# ------------------------------------------------------------------------------------------------- the script
@pytest.fixture(scope="module")
def offline_env(tmp_path_factory) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def runner(offline_env):
    patch = pytest.MonkeyPatch()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME"):
        patch.setenv(key, offline_env[key])
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("run_semantic_segmentation")
    finally:
        sys.path.remove(str(EXAMPLES))
        patch.undo()


@pytest.fixture(scope="module")
def lite0_run(runner, tmp_path_factory) -> Path:
    """A tiny UperNet + ConvNeXt behind a reshaper scored by the packaged Lite0 trunk, 3 steps in this process."""
    output = tmp_path_factory.mktemp("seg") / "lite0"
    torch.set_num_threads(1)
    # no scorer field given: --scorer_trunk_weights efficientnet_lite0 brings the Lite0 trunk and saliency head
    metrics = runner.main([*RUN, "--backbone_config", TINY_CONVNEXT, "--config_overrides", RESHAPER,
                           "--scorer_trunk_weights", "efficientnet_lite0", "--max_steps", "3",
                           "--output_dir", str(output)])
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    return output


def check_run(output: Path, steps: int, world_size: int) -> dict:
    results = json.loads((output / "all_results.json").read_text())
    assert results["world_size"] == world_size and results["eval_samples"] == 16
    assert 0.0 <= results["eval_mean_iou"] <= 1.0 and "eval_iou_background" in results
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == steps and all(math.isfinite(loss) for loss in losses)
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "dart_reshaper" and config["backbone_config"]["model_type"] == "upernet"
    assert config["id2label"]["0"] == "background" and len(config["id2label"]) == 11
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-segmentation" in card and "eval_mean_iou" in card and "segments the warped" in card
    return results


def test_one_process_run_reloads_and_segments(lite0_run):
    from transformers import AutoModelForSemanticSegmentation, pipeline

    from modeling_dart import DartImageProcessor, DartReshaperForSemanticSegmentation

    check_run(lite0_run, steps=3, world_size=1)
    config = json.loads((lite0_run / "config.json").read_text())
    assert (config["scorer_trunk"], config["scorer_head"], config["freeze_scorer_trunk"]) == (
        "efficientnet_lite0", "saliency", True)
    model = AutoModelForSemanticSegmentation.from_pretrained(lite0_run).eval()
    assert type(model) is DartReshaperForSemanticSegmentation
    image = Image.open(DATA / "validation" / "images" / "canvas_00000.jpg")
    inputs = DartImageProcessor.from_pretrained(lite0_run)(image, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 128, 128)
    with torch.no_grad():
        classes = model(**inputs).logits.argmax(1)[0]
    found = pipeline("image-segmentation", model=str(lite0_run))(image)
    assert [item["label"] for item in found] == [model.config.id2label[c] for c in classes.unique().tolist()]
    assert all(item["mask"].size == image.size for item in found)


def test_the_scorer_learns_from_the_segmentation_loss(runner, lite0_run, tmp_path):
    """The scorer head gets nonzero gradients from the segmentation loss, and fine-tuning the saved folder (with
    `--model_name_or_path`) for two steps changes it while the frozen Lite0 trunk stays as it was."""
    from transformers import AutoModelForSemanticSegmentation

    from modeling_dart import DartImageProcessor

    model = AutoModelForSemanticSegmentation.from_pretrained(lite0_run).train()
    processor = DartImageProcessor.from_pretrained(lite0_run)
    images = [Image.open(DATA / "train" / "images" / f"canvas_{i:05d}.jpg") for i in range(4)]
    masks = [Image.open(DATA / "train" / "masks" / f"canvas_{i:05d}.png") for i in range(4)]
    model(**processor(images, segmentation_maps=masks, return_tensors="pt")).loss.backward()
    head = {name: p for name, p in model.named_parameters() if name.startswith(HEAD)}
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.values())

    output = tmp_path / "tuned"
    runner.main([*RUN, "--model_name_or_path", str(lite0_run), "--max_steps", "2", "--do_eval", "false",
                 "--output_dir", str(output)])
    before, after = load_file(lite0_run / "model.safetensors"), load_file(output / "model.safetensors")
    assert all(not torch.equal(before[key], after[key]) for key in before if key.startswith(HEAD))
    trunk = [key for key in before if ".scorer.features." in key and "num_batches_tracked" not in key]
    assert trunk and all(torch.equal(before[key], after[key]) for key in trunk)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes(tmp_path, offline_env):
    """`accelerate launch --num_processes 2` on CPU, a trainable MobileNetV3 scorer trunk: every parameter takes
    part in the loss (DDP without unused-parameter search) and evaluation gathers both halves of the split."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate is not None, "the accelerate CLI is part of the [train] extra"
    output = tmp_path / "ddp"
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               str(SCRIPT), *RUN, "--backbone_config", TINY_CONVNEXT, "--config_overrides", MOBILENET,
               "--max_steps", "2", "--ddp_find_unused_parameters", "false", "--output_dir", str(output)]
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=offline_env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "world_size: 2" in result.stdout + result.stderr
    check_run(output, steps=2, world_size=2)


# ------------------------------------------------------------------------------------------------- bad input
BAD = [
    (["--train_dir", "/no/such/dir"], "--train_dir", "not a folder"),
    (["--train_dir", str(DATA)], "--train_dir", "no images/"),
    (["--id2label", "/no/such.json"], "--id2label", "no such file"),
    (["--backbone_config", '{"model_type": "convnext"'], "--backbone_config", "not a valid JSON"),
    (["--backbone_config", '{"model_type": "bert"}'], "--backbone_config", "segmentation"),
    (["--backbone_config", '{"model_type": "convnext", "hidden_sizez": [8]}'], "--backbone_config",
     "did you mean 'hidden_sizes'"),
    (["--backbone_config", "rmt_xl"], "--backbone_config", "no RMT preset"),
    (["--backbone_config", TINY_CONVNEXT, "--config_overrides", "scorer=uniform", "--scorer_trunk_weights",
      "efficientnet_lite0"], "--scorer_trunk_weights", "uniform"),
    (["--backbone_config", TINY_CONVNEXT, "--config_overrides", "backbone_config.hidden_sise=8"],
     "--config_overrides", "hidden_size"),
    (["--model_name_or_path", "/no/such/folder"], "--model_name_or_path", "no such folder"),
    ([], "--backbone_config", "--model_name_or_path"),
    (["--hflip_probability", "2"], "--hflip_probability", "[0, 1]"),
    (["--dataset_name", "scene_parse_150"], "--dataset_name", "exclude each other"),
    (["--id2label", str(EXAMPLES / "data" / "sparse_fashion" / "boxes_validation.json"), "--backbone_config",
      TINY_CONVNEXT], "--id2label", "integer id"),
]


@pytest.mark.parametrize(("extra", "flag", "words"), BAD, ids=[f"{i}-{case[1]}" for i, case in enumerate(BAD)])
def test_bad_flags_give_one_line(runner, tmp_path, capsys, extra, flag, words):
    args = [*RUN, *extra, "--output_dir", str(tmp_path / "out")]
    # a later --train_dir wins over RUN's
    assert runner.cli(args) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and message.startswith("error:"), message
    assert flag in message and words in message, message


def test_mask_with_an_unknown_class_is_refused(runner, tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "validation"):
        for sub in ("images", "masks"):
            (data / split / sub).mkdir(parents=True)
        shutil.copy(DATA / split / "images" / "canvas_00000.jpg", data / split / "images")
        mask = np.asarray(Image.open(DATA / split / "masks" / "canvas_00000.png")).copy()
        mask[0, 0] = 40
        Image.fromarray(mask).save(data / split / "masks" / "canvas_00000.png")
    shutil.copy(DATA / "id2label.json", data)
    code = runner.cli(["--train_dir", str(data / "train"), "--validation_dir", str(data / "validation"),
                       *RUN[len(DATA_ARGS):], "--backbone_config", TINY_CONVNEXT, "--config_overrides", RESHAPER,
                       "--max_steps", "1", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "out")])
    message = capsys.readouterr().err.strip()  # found as the first batch is read: no progress bar before it
    assert code == 2 and message.count("\n") == 0 and message.startswith("error: `--train_dir`"), message
    assert "class id 40" in message, message


# ------------------------------------------------------------------------------- other backbones, other layouts
TINY_BACKBONES = {
    "swin": {"model_type": "swin", "embed_dim": 8, "depths": [1, 1, 1], "num_heads": [1, 2, 2], "window_size": 2},
    "rmt": {"model_type": "rmt", "embed_dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1], "num_heads": [2, 2, 3, 4],
            "heads_ranges": [4, 4, 6, 6], "mlp_ratios": [2, 2, 2, 2], "projection": 16},
    "upernet": {"model_type": "upernet", "hidden_size": 8, "auxiliary_channels": 4, "pool_scales": [1, 2],
                "backbone_config": {"model_type": "convnext", "num_stages": 3, "hidden_sizes": [8, 16, 16],
                                    "depths": [1, 1, 1], "out_features": ["stage1", "stage2", "stage3"]}},
    "segformer": {"model_type": "segformer", "num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1],
                  "hidden_sizes": [8, 16], "patch_sizes": [7, 3], "strides": [4, 2], "num_attention_heads": [1, 2],
                  "mlp_ratios": [2, 2], "decoder_hidden_size": 8},
}


@pytest.mark.parametrize("kind", list(TINY_BACKBONES))
def test_backbone_forms_build_and_the_scorer_gets_gradients(runner, kind):
    """A Swin or RMT backbone goes into a UperNet reading all its stages; a UperNet or Segformer config is taken as
    it is. With the bundled masks the loss is finite and reaches the scorer head."""
    overrides = ("image_size=128,patch_size=8,score_grid_size=8,scorer_trunk=mobilenet_v3_small,scorer_trunk_depth=4"
                 + ("," + UPERNET if kind in ("swin", "rmt") else ""))
    model_args = runner.ModelArguments(backbone_config=json.dumps(TINY_BACKBONES[kind]), config_overrides=overrides)
    id2label = {int(k): v for k, v in json.loads((DATA / "id2label.json").read_text()).items()}
    torch.manual_seed(0)
    model = runner.build_model(model_args, id2label).train()
    segmenter = model.config.backbone_config
    assert segmenter.model_type == ("segformer" if kind == "segformer" else "upernet")
    if kind in ("swin", "rmt"):
        assert segmenter.backbone_config.model_type == kind
        assert segmenter.backbone_config.out_features == [f"stage{i}" for i in range(1, len(
            TINY_BACKBONES[kind]["depths"]) + 1)]
    processor = runner.build_image_processor(model_args, model)
    images = [Image.open(DATA / "train" / "images" / f"canvas_{i:05d}.jpg") for i in range(2)]
    masks = [Image.open(DATA / "train" / "masks" / f"canvas_{i:05d}.png") for i in range(2)]
    outputs = model(**processor(images, segmentation_maps=masks, return_tensors="pt"))
    assert outputs.logits.shape == (2, 11, 128, 128) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    head = [p for name, p in model.named_parameters() if name.startswith(HEAD)]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)


def test_hub_layout_with_reduce_labels_evaluates_as_the_folder(runner, lite0_run, tmp_path):
    """A dataset with `image` and `annotation` columns (ADE20K's layout, read here from local parquet through
    `--dataset_name`), whose annotations carry class + 1 with 0 unused, evaluated with `--reduce_labels true`, gives
    the saved model the mean IoU that the run measured on the bundled folder."""
    from datasets import Dataset, Features
    from datasets import Image as ImageFeature

    rows = {"image": [], "annotation": []}
    for path in sorted((DATA / "validation" / "images").iterdir()):
        rows["image"].append({"bytes": path.read_bytes(), "path": None})
        shifted = np.asarray(Image.open(DATA / "validation" / "masks" / f"{path.stem}.png")).astype(np.uint8) + 1
        buffer = tmp_path / "mask.png"
        Image.fromarray(shifted).save(buffer)
        rows["annotation"].append({"bytes": buffer.read_bytes(), "path": None})
    features = Features({"image": ImageFeature(), "annotation": ImageFeature()})
    (tmp_path / "hub" / "data").mkdir(parents=True)
    Dataset.from_dict(rows, features=features).to_parquet(tmp_path / "hub" / "data" / "validation-00000.parquet")
    metrics = runner.main(["--dataset_name", str(tmp_path / "hub"), "--reduce_labels", "true",
                           "--model_name_or_path", str(lite0_run), "--do_eval", "true",
                           "--per_device_eval_batch_size", "16", "--report_to", "none",
                           "--output_dir", str(tmp_path / "eval")])
    reference = json.loads((lite0_run / "all_results.json").read_text())
    assert metrics["eval_samples"] == 16
    assert metrics["eval_mean_iou"] == pytest.approx(reference["eval_mean_iou"], abs=1e-6)
    assert metrics["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)


def test_mask_of_another_size_is_refused(runner, tmp_path, capsys):
    data = tmp_path / "data" / "validation"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    shutil.copy(DATA / "validation" / "images" / "canvas_00000.jpg", data / "images")
    Image.fromarray(np.zeros((64, 128), np.uint8)).save(data / "masks" / "canvas_00000.png")
    shutil.copy(DATA / "id2label.json", data)
    code = runner.cli(["--validation_dir", str(data), "--backbone_config", TINY_CONVNEXT, "--config_overrides",
                       RESHAPER, "--do_eval", "true", "--disable_tqdm", "true", "--report_to", "none",
                       "--output_dir", str(tmp_path / "out")])
    message = capsys.readouterr().err.strip()
    assert code == 2 and message.count("\n") == 0 and message.startswith("error: `--validation_dir`"), message
    assert "64x128" in message and "128x128" in message, message


def test_reduce_labels_keeps_255_ignored(runner, lite0_run, tmp_path):
    """With `--reduce_labels true`, 0 becomes the ignore index and 255 stays it (not 254, which would be a class id
    out of range and stop the run)."""
    data = tmp_path / "validation"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    for i in range(2):
        shutil.copy(DATA / "validation" / "images" / f"canvas_{i:05d}.jpg", data / "images")
        shifted = np.asarray(Image.open(DATA / "validation" / "masks" / f"canvas_{i:05d}.png")).astype(np.uint8) + 1
        shifted[:4, :4] = 255
        shifted[-4:, -4:] = 0
        Image.fromarray(shifted).save(data / "masks" / f"canvas_{i:05d}.png")
    metrics = runner.main(["--validation_dir", str(data), "--reduce_labels", "true", "--model_name_or_path",
                           str(lite0_run), "--do_eval", "true", "--report_to", "none", "--disable_tqdm", "true",
                           "--output_dir", str(tmp_path / "out")])
    assert metrics["eval_samples"] == 2 and math.isfinite(metrics["eval_loss"])
