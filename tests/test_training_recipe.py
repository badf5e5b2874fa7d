"""The DeiT training recipe (`examples/deit_recipe.py`) and what `examples/run_image_classification.py` does with it:
each augmentation and optimisation element on its own, the `deit_imagenet` preset, long-sequence fine-tuning,
streaming from parquet shards (one and two processes), exact resumption, and the FSDP / DeepSpeed configs.

References are independent computations (PIL / numpy / PyTorch's own functions, closed forms), never the code under
test."""

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
SCRIPT = EXAMPLES / "run_image_classification.py"
CONFIGS = EXAMPLES / "accelerate_configs"
DATA = EXAMPLES / "data" / "sparse_fashion"
TINY_MODEL = ("image_size=64,patch_size=8,score_grid_size=8,num_tokens=64,hidden_size=32,num_hidden_layers=2,"
              "num_attention_heads=2,scorer_trunk_depth=4,freeze_scorer_trunk=false")
TINY_DATA = ["--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation"),
             "--max_train_samples", "24", "--max_eval_samples", "10"]
TINY_RUN = [*TINY_DATA, "--config_overrides", TINY_MODEL, "--crop_pct", "1.0", "--do_train", "true",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "10", "--learning_rate", "1e-3",
            "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1", "--report_to", "none",
            "--dataloader_num_workers", "0", "--seed", "3"]
ALL_ON = ["--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing_factor", "0.1", "--rand_augment",
          "rand-m9-mstd0.5-inc1", "--random_erasing", "0.25", "--repeated_augmentation", "3", "--model_ema", "true",
          "--model_ema_decay", "0.9", "--layer_decay", "0.75", "--drop_path_rate", "0.1"]


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
def recipe():
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("deit_recipe")
    finally:
        sys.path.remove(str(EXAMPLES))


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


def _run(command, env, timeout=400):
    result = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate():
    path = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert path is not None, "the accelerate CLI is part of the [train] extra"
    return path


def _launch_two_processes(launch, script_args, env):
    """`accelerate launch <launch> --num_processes 2 ... examples/run_image_classification.py <script_args>` on CPU."""
    return _run([_accelerate(), "launch", *launch, "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                 "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(SCRIPT), *script_args],
                env)


@pytest.fixture
def photo():
    return Image.open(REPO_ROOT / "conversion" / "assets" / "chelsea.jpg").convert("RGB").resize((96, 64))


# --------------------------------------------------------------------------------------------- RandAugment
def test_rand_augment_reads_the_deit_policy(recipe):
    policy = recipe.RandAugment("rand-m9-mstd0.5-inc1")
    assert policy.num_ops == 2 and len(policy.ops) == 15
    op = policy.ops[0]
    assert (op.magnitude, op.magnitude_std, op.prob, op.increasing) == (9.0, 0.5, 0.5, True)
    assert op.fill == (124, 116, 104) and op.resample == Image.Resampling.BICUBIC
    draws = np.array([op.draw_magnitude(np.random.default_rng(i)) for i in range(2000)])
    assert abs(draws.mean() - 9.0) < 0.05 and draws.max() <= 10.0 and abs(draws.std() - 0.5) < 0.06
    for bad in ("m9", "rand-x9", "rand-n0", "rand-p2"):
        with pytest.raises(ValueError, match="rand_augment"):
            recipe.RandAugment(bad)


def _op(recipe, name, magnitude=9.0, std=0.0):
    return recipe.RandAugmentOp(name, 1.0, magnitude, std, 10.0, (124, 116, 104), Image.Resampling.BICUBIC, True)


def test_rand_augment_operations_on_pil(recipe, photo):
    pixels = np.asarray(photo).astype(np.int64)
    rng = np.random.default_rng(0)
    assert np.array_equal(np.asarray(_op(recipe, "Invert")(photo, rng)), 255 - pixels)
    # posterize keeps 4 - int(4 * 0.9) = 1 bit; solarize inverts values >= 256 - int(256 * 0.9) = 26
    assert np.array_equal(np.asarray(_op(recipe, "Posterize")(photo, rng)), pixels & 0b10000000)
    assert np.array_equal(np.asarray(_op(recipe, "Solarize")(photo, rng)), np.where(pixels >= 26, 255 - pixels, pixels))
    added = np.where(pixels < 128, np.minimum(pixels + 99, 255), pixels)  # int(110 * 0.9) = 99
    assert np.array_equal(np.asarray(_op(recipe, "SolarizeAdd")(photo, rng)), added)
    assert np.array_equal(np.asarray(_op(recipe, "Posterize", magnitude=10)(photo, rng)), np.zeros_like(pixels))
    # brightness moves by a factor 1 +- 0.9 * 0.9
    from PIL import ImageEnhance

    bright = np.asarray(_op(recipe, "Brightness")(photo, np.random.default_rng(1)))
    candidates = [np.asarray(ImageEnhance.Brightness(photo).enhance(factor)) for factor in (1 + 0.81, 1 - 0.81)]
    assert any(np.array_equal(bright, candidate) for candidate in candidates)
    # geometric operations uncover the fill colour (a 27-degree rotation leaves the corners empty)
    rotated = _op(recipe, "Rotate")(photo, rng)
    assert rotated.size == photo.size and rotated.getpixel((0, 0)) == (124, 116, 104)
    translated = np.asarray(_op(recipe, "TranslateXRel", magnitude=10)(photo, np.random.default_rng(2)))
    uncovered = translated[:, :40] if (translated[:, :40] == (124, 116, 104)).all() else translated[:, -40:]
    assert (uncovered == (124, 116, 104)).all()  # 0.45 * 96 = 43 columns moved out
    for name in recipe.RAND_AUGMENT_OPS:
        out = _op(recipe, name, std=0.5)(photo, np.random.default_rng(3))
        assert out.size == photo.size and out.mode == "RGB", name


def test_rand_augment_is_keyed_by_its_generator(recipe, photo):
    policy = recipe.RandAugment("rand-m9-mstd0.5-inc1")
    first = [np.asarray(policy(photo, np.random.default_rng(seed))) for seed in range(6)]
    again = [np.asarray(policy(photo, np.random.default_rng(seed))) for seed in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) >= 4  # different keys, different images
    # with p = 0.5 per operation, about a quarter of the images keep no operation
    unchanged = sum(np.array_equal(np.asarray(policy(photo, np.random.default_rng(s))), np.asarray(photo))
                    for s in range(200))
    assert 25 <= unchanged <= 80


# ------------------------------------------------------------------------------------------ random erasing
def test_random_erasing_erases_one_rectangle_of_normal_values(recipe):
    erase = recipe.RandomErasing(probability=1.0)
    areas, aspects = [], []
    for seed in range(200):
        pixels = torch.full((3, 60, 80), 7.0)
        erase(pixels, np.random.default_rng(seed))
        changed = (pixels != 7.0).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(changed.sum()) == h * w  # one rectangle
        areas.append(h * w / (60 * 80))
        aspects.append(h / w)
        values = pixels[:, changed]
        assert values.shape[1] == h * w
    assert 0.015 < min(areas) and max(areas) < 0.36 and 0.25 < min(aspects) and max(aspects) < 3.6
    big = torch.zeros(3, 200, 200)
    recipe.RandomErasing(probability=1.0, min_area=0.3, max_area=0.33)(big, np.random.default_rng(0))
    values = big[big != 0]
    assert abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1) < 0.05  # "pixel": N(0, 1)
    hits = sum(bool((recipe.RandomErasing(0.25)(torch.zeros(3, 32, 32), np.random.default_rng(s)) != 0).any())
               for s in range(400))
    assert 70 <= hits <= 130  # binomial(400, 0.25): mean 100, sd 8.7
    const = recipe.RandomErasing(1.0, mode="const")(torch.ones(3, 32, 32), np.random.default_rng(0))
    assert (const == 0).any() and set(const.unique().tolist()) == {0.0, 1.0}
    for kwargs, name in (({"probability": 1.5}, "random_erasing"), ({"mode": "noise"}, "random_erasing_mode"),
                         ({"count": 0}, "random_erasing_count")):
        with pytest.raises(ValueError, match=name):
            recipe.RandomErasing(**kwargs)


# ------------------------------------------------------------------------------------------ mixup / cutmix
def test_soft_target_loss_equals_torch_label_smoothing(recipe):
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    targets = recipe.soft_targets(labels, 5, 0.1)
    assert torch.allclose(targets.sum(1), torch.ones(6)) and targets[0, 0] == pytest.approx(0.92)
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(recipe.soft_target_cross_entropy(logits, targets), expected)


def test_mixup_and_cutmix_mix_pixels_and_targets_alike(recipe):
    mixer = recipe.MixupCutmix(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0)
    pixels = torch.randn(4, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    seen = {"mixup": 0, "cutmix": 0}
    for seed in range(60):
        mixed, targets = mixer(pixels, labels, np.random.default_rng(seed))
        lam = float(targets[0, 0])  # weight of image 0's own label (the reversed batch holds label 3 there)
        assert torch.allclose(targets.sum(1), torch.ones(4)) and float(targets[0, 3]) == pytest.approx(1 - lam, abs=1e-6)
        from_reversed = torch.isclose(mixed, pixels.flip(0)) & ~torch.isclose(mixed, pixels)
        if from_reversed.any() and torch.isclose(mixed, pixels).logical_or(torch.isclose(mixed, pixels.flip(0))).all():
            seen["cutmix"] += 1  # every pixel from one of the two images, a box from the reversed one
            kept = 1 - from_reversed[0, 0].float().mean()
            assert float(kept) == pytest.approx(lam, abs=1e-6)
        else:
            seen["mixup"] += 1
            torch.testing.assert_close(mixed, lam * pixels + (1 - lam) * pixels.flip(0), atol=1e-5, rtol=0)
    assert seen["mixup"] >= 15 and seen["cutmix"] >= 15  # switch probability 0.5
    assert torch.equal(pixels, torch.randn(4, 3, 16, 20, generator=torch.Generator().manual_seed(0)))  # untouched


def test_mixup_switches_and_validation(recipe):
    lams = [recipe.MixupCutmix(4, 0.8, 0.0).draw(np.random.default_rng(s)) for s in range(3000)]
    assert all(not cut for _, cut in lams)
    assert abs(np.mean([lam for lam, _ in lams]) - 0.5) < 0.02  # Beta(0.8, 0.8) has mean 1/2
    off = recipe.MixupCutmix(4, 0.8, 1.0, prob=0.0, label_smoothing=0.1)
    pixels = torch.randn(2, 3, 8, 8)
    mixed, targets = off(pixels, torch.tensor([1, 2]), np.random.default_rng(0))
    assert torch.equal(mixed, pixels) and torch.allclose(targets[0], torch.tensor([0.025, 0.925, 0.025, 0.025]))
    for kwargs, name in (({"mixup_alpha": -1}, "mixup"), ({"cutmix_alpha": -1}, "cutmix"), ({"prob": 2}, "mixup_prob"),
                         ({"switch_prob": -0.1}, "mixup_switch_prob"), ({"label_smoothing": 1.0}, "label_smoothing")):
        with pytest.raises(ValueError, match=name):
            recipe.MixupCutmix(4, **kwargs)
    with pytest.raises(ValueError, match="labels"):
        recipe.MixupCutmix(4)(pixels, torch.tensor([0, 4]), np.random.default_rng(0))


# -------------------------------------------------------------------------------------- repeated sampling
def test_repeated_augmentation_sampler_spreads_copies_over_processes(recipe):
    n, repeats, world = 24, 3, 2
    samplers = [recipe.RepeatedAugmentationSampler(n, repeats, world, rank, seed=5) for rank in range(world)]
    for sampler in samplers:
        sampler.set_epoch(1)
    per_rank = [list(sampler) for sampler in samplers]
    assert [len(keys) for keys in per_rank] == [n // world] * world == [len(s) for s in samplers]
    everything = [key for keys in per_rank for key in keys]
    assert len(set(everything)) == len(everything)  # no (index, copy) twice
    assert all(key.epoch == 1 for key in everything)
    counts = {}
    for key in everything:
        counts.setdefault(key.index, []).append(key.copy)
    # an epoch of N samples is about N / 3 images, each augmented 3 times, its copies on different processes
    assert len(counts) == n // repeats and all(sorted(c) == [0, 1, 2] for c in counts.values())
    for index in counts:
        ranks = {rank for rank, keys in enumerate(per_rank) for key in keys if key.index == index}
        assert ranks == {0, 1}
    # deterministic per epoch, reshuffled across epochs
    again = recipe.RepeatedAugmentationSampler(n, repeats, world, 0, seed=5)
    again.set_epoch(1)
    assert list(again) == per_rank[0]
    again.set_epoch(2)
    assert [k.index for k in again] != [k.index for k in per_rank[0]]
    # one copy: a plain distributed shuffle covering every image once (padded to equal shares)
    plain = [list(recipe.RepeatedAugmentationSampler(25, 1, 2, rank, seed=0)) for rank in range(2)]
    assert [len(keys) for keys in plain] == [13, 13]
    assert {k.index for keys in plain for k in keys} == set(range(25))
    with pytest.raises(ValueError, match="rank"):
        recipe.RepeatedAugmentationSampler(10, 3, 2, 2)
    with pytest.raises(ValueError, match="num_repeats"):
        recipe.RepeatedAugmentationSampler(10, 0)


def test_augmented_dataset_draws_from_the_sample_key(recipe, photo):
    from modeling_dart import DartImageProcessor

    processor = DartImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    augmentation = recipe.TrainAugmentation(processor, rand_augment=recipe.RandAugment("rand-m9-mstd0.5-inc1"),
                                            erasing=recipe.RandomErasing(0.5))
    rows = [{"image": photo, "label": 2}, {"image": photo.rotate(90), "label": 1}]
    dataset = recipe.AugmentedImageDataset(rows, augmentation, seed=7)
    key = recipe.SampleKey(1, 4, 2)
    first, second = dataset[key], dataset[key]
    assert first["pixel_values"].shape == (3, 32, 32) and first["labels"] == 1
    assert torch.equal(first["pixel_values"], second["pixel_values"])
    others = [dataset[recipe.SampleKey(1, 4, copy)]["pixel_values"] for copy in (0, 1)]
    assert not any(torch.equal(first["pixel_values"], other) for other in others)
    assert torch.equal(dataset[0]["pixel_values"], dataset[recipe.SampleKey(0, 0, 0)]["pixel_values"])


def test_augmented_dataset_batches_equal_its_items(recipe, photo):
    """`__getitems__` (what the DataLoader calls) reads a `datasets.Dataset`'s rows in one call and gives exactly
    the items `__getitem__` gives key by key."""
    import datasets

    from modeling_dart import DartImageProcessor

    processor = DartImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    augmentation = recipe.TrainAugmentation(processor, erasing=recipe.RandomErasing(0.5))
    rows = datasets.Dataset.from_dict(
        {"image": [photo, photo.rotate(90), photo.transpose(0)], "label": [2, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    reads = []

    class CountingRows:  # the dataset's own batched read, counted; single-row reads are refused
        def __getitems__(self, indices):
            reads.append(list(indices))
            return rows.__getitems__(indices)

        def __getitem__(self, index):
            raise AssertionError("read row by row")

        def __len__(self):
            return len(rows)

    batched = recipe.AugmentedImageDataset(CountingRows(), augmentation, seed=3)
    single = recipe.AugmentedImageDataset(rows, augmentation, seed=3)
    keys = [recipe.SampleKey(2, 1, 0), 0, recipe.SampleKey(1, 0, 1), recipe.SampleKey(2, 1, 0)]
    items = batched.__getitems__(keys)
    assert reads == [[2, 0, 1, 2]]
    for key, item in zip(keys, items):
        expected = single[key]
        assert item["labels"] == expected["labels"]
        assert torch.equal(item["pixel_values"], expected["pixel_values"])
    loader = torch.utils.data.DataLoader(batched, batch_size=3, collate_fn=lambda batch: batch)
    assert len(next(iter(loader))) == 3 and reads[-1] == [0, 1, 2]
    # a plain list of rows has no batched read: items are read one by one
    plain = recipe.AugmentedImageDataset([rows[0], rows[1]], augmentation, seed=3)
    assert torch.equal(plain.__getitems__([1])[0]["pixel_values"], single[1]["pixel_values"])


# ----------------------------------------------------------------------------------------------------- EMA
def test_model_ema_follows_the_closed_form_and_survives_a_checkpoint(recipe, tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = recipe.ModelEmaCallback(decay=0.5)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    ema.on_train_begin(args, state, control, model=model)
    for step, value in enumerate([3.0, 5.0, 9.0], start=1):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.on_step_end(args, state, control, model=model)
        state.global_step = step
    # 1 -> 0.5 * 1 + 0.5 * 3 = 2 -> 3.5 -> 6.25
    assert torch.allclose(ema.state["weight"], torch.full((1, 2), 6.25))
    ema.on_save(args, state, control)
    assert (tmp_path / "checkpoint-3" / "model_ema.safetensors").is_file()
    resumed = recipe.ModelEmaCallback(decay=0.5, resume_from=str(tmp_path / "checkpoint-3"))
    resumed.on_train_begin(args, state, control, model=model)
    assert torch.equal(resumed.state["weight"], ema.state["weight"])
    kept = resumed.swap_into(model)
    assert torch.allclose(model.weight, torch.full((1, 2), 6.25))
    resumed.restore(model, kept)
    assert torch.allclose(model.weight, torch.full((1, 2), 9.0))
    with pytest.raises(ValueError, match="model_ema_decay"):
        recipe.ModelEmaCallback(decay=1.0)
    with pytest.raises(FileNotFoundError, match="model_ema"):
        recipe.ModelEmaCallback(resume_from=str(tmp_path)).on_train_begin(args, state, control, model=model)


# ---------------------------------------------------------------------------------------- optimiser groups
def test_layer_decay_groups_and_deit_weight_decay_rule(recipe):
    from modeling_dart import DartForImageClassification
    from tests.conftest import tiny_config

    model = DartForImageClassification(tiny_config(num_hidden_layers=3, freeze_scorer_trunk=False))
    groups = recipe.parameter_groups(model, learning_rate=1.0, weight_decay=0.05, layer_decay=0.5)
    by_name = {name: group for group in groups for name in group["param_names"]}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(by_name) == sorted(trainable)
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    layers = 3
    assert by_name["classifier.weight"]["lr"] == 1.0
    assert by_name["dart.encoder.layernorm.weight"]["lr"] == 1.0
    for i in range(layers):  # block i: 0.5 ** (L + 1 - (i + 1))
        assert by_name[f"dart.encoder.layer.{i}.mlp.fc1.weight"]["lr"] == pytest.approx(0.5 ** (layers - i))
    assert by_name["dart.embeddings.projection.weight"]["lr"] == pytest.approx(0.5 ** (layers + 1))
    assert by_name["dart.embeddings.position_embeddings"]["lr"] == pytest.approx(0.5 ** (layers + 1))
    scorer = [name for name in by_name if ".scorer." in name]
    assert scorer and all(by_name[name]["lr"] == 1.0 for name in scorer)  # a new network: full rate
    no_decay = {"dart.embeddings.cls_token", "dart.embeddings.position_embeddings", "classifier.bias",
                "dart.encoder.layer.0.layernorm_before.weight", "dart.encoder.layer.1.attention.qkv.bias"}
    assert all(by_name[name]["weight_decay"] == 0.0 for name in no_decay)
    assert by_name["dart.encoder.layer.0.attention.qkv.weight"]["weight_decay"] == 0.05
    assert by_name["classifier.weight"]["weight_decay"] == 0.05
    optimizer = torch.optim.AdamW(groups, lr=1.0)  # the groups are valid optimizer groups
    assert len(optimizer.param_groups) == len(groups)
    with pytest.raises(ValueError, match="layer_decay"):
        recipe.parameter_groups(model, 1.0, 0.05, layer_decay=0.0)
    assert recipe.scaled_learning_rate(5e-4, 32, 8, 1, 512) == pytest.approx(2.5e-4)  # DART's recipe on 8 GPUs


# ------------------------------------------------------------------------------------------------- preset
def test_deit_imagenet_preset_holds_the_original_recipe(runner):
    model_args, data_args, training_args = runner.parse_args(["--preset", "deit_imagenet", *TINY_DATA[:4]])
    assert model_args.image_size == 448 and model_args.crop_pct == 0.875 and model_args.drop_path_rate == 0.1
    assert training_args.num_train_epochs == 300 and training_args.learning_rate == 5e-4
    assert training_args.scale_lr_by_batch and training_args.base_batch_size == 512
    assert training_args.total_train_batch_size == 256
    assert training_args.per_device_train_batch_size == 256 // training_args.world_size
    assert training_args.weight_decay == 0.05 and training_args.optim == "adamw_torch"
    assert training_args.adam_epsilon == 1e-8 and (training_args.adam_beta1, training_args.adam_beta2) == (0.9, 0.999)
    assert training_args.lr_scheduler_type == "cosine_warmup_with_min_lr"
    assert training_args.lr_scheduler_kwargs == {"min_lr": 1e-5, "warmup_lr_rate": 0.004}  # 1e-6 / 2.5e-4
    assert training_args.warmup_steps == pytest.approx(5 / 300)
    assert training_args.label_smoothing_factor == 0.1 and training_args.max_grad_norm == 0
    assert (data_args.mixup, data_args.cutmix, data_args.mixup_prob, data_args.mixup_switch_prob) == (0.8, 1.0, 1.0, 0.5)
    assert data_args.rand_augment == "rand-m9-mstd0.5-inc1"
    assert (data_args.random_erasing, data_args.random_erasing_mode, data_args.random_erasing_count) == (0.25, "pixel", 1)
    assert data_args.repeated_augmentation == 3
    assert training_args.model_ema and training_args.model_ema_decay == 0.99996
    assert training_args.dataloader_drop_last and training_args.layer_decay == 1.0
    with pytest.raises(ValueError, match="total_train_batch_size"):
        runner.parse_args(["--preset", "deit_imagenet", *TINY_DATA[:4], "--total_train_batch_size", "100",
                           "--gradient_accumulation_steps", "3"])


def test_deit_imagenet_preset_runs_and_saves_the_ema(runner, tmp_path):
    output = tmp_path / "deit"
    tiny = [arg for i, arg in enumerate(TINY_RUN) if "--learning_rate" not in TINY_RUN[max(i - 1, 0) : i + 1]]
    metrics = runner.main(["--preset", "deit_imagenet", *tiny, "--image_size", "64", "--total_train_batch_size",
                           "4", "--max_steps", "2", "--do_eval", "true", "--eval_strategy", "no", "--save_strategy",
                           "no", "--model_ema_decay", "0.5", "--dataloader_num_workers", "0",
                           "--per_device_eval_batch_size", "16",  # more than the 10 images: drop_last must not apply
                           "--output_dir", str(output)])
    assert metrics["learning_rate"] == pytest.approx(5e-4 * 4 / 512)  # scaled by the total batch
    assert "eval_ema_accuracy" in metrics and "eval_accuracy" in metrics
    config = json.loads((output / "config.json").read_text())
    assert config["drop_path_rate"] == 0.1 and config["image_size"] == 64
    main, ema = load_file(output / "model.safetensors"), load_file(output / "ema" / "model.safetensors")
    assert main.keys() == ema.keys() and any(not torch.equal(main[k], ema[k]) for k in main)
    assert (output / "ema" / "config.json").is_file() and (output / "ema" / "preprocessor_config.json").is_file()
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2


# ------------------------------------------------------------------------------------------ long sequence
def test_finetune_a_dart_folder_at_more_tokens(runner, tmp_path, monkeypatch):
    """The paper's long-sequence models (e.g. DART-S-392 fine-tuned from DART-S): a saved folder fine-tuned at
    another `num_tokens` trains and evaluates at that number, and its saved config records it."""
    from modeling_dart.embeddings_dart import DartEmbeddings

    base = tmp_path / "base"
    runner.main([*TINY_RUN, "--max_steps", "1", "--output_dir", str(base)])
    assert json.loads((base / "config.json").read_text())["num_tokens"] == 64
    used = []
    original_forward = DartEmbeddings.forward

    def recording_forward(self, pixel_values, num_tokens=None, **kwargs):
        out = original_forward(self, pixel_values, num_tokens=num_tokens, **kwargs)
        used.append((self.training, out.patch_tokens.shape[1]))
        return out

    monkeypatch.setattr(DartEmbeddings, "forward", recording_forward)
    long = tmp_path / "long"
    runner.main([*TINY_DATA, "--model_name_or_path", str(base), "--num_tokens", "128", "--do_train", "true",
                 "--do_eval", "true", "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate",
                 "1e-4", "--save_strategy", "no", "--report_to", "none", "--output_dir", str(long)])
    assert {count for _, count in used} == {128} and {training for training, _ in used} == {True, False}
    assert json.loads((long / "config.json").read_text())["num_tokens"] == 128
    before, after = load_file(base / "model.safetensors"), load_file(long / "model.safetensors")
    assert before.keys() == after.keys()  # the same weights' shapes: the position table is resampled, not resized


# ------------------------------------------------------------------------------------------------- resume
def test_interrupted_run_resumed_gives_the_same_weights_bit_for_bit(runner, tmp_path, monkeypatch):
    """Every random element on (crop, flip, RandAugment, erasing, mixup/cutmix, repeated augmentation, drop path,
    EMA): 7 steps in one go, against 7 steps interrupted after step 5 and resumed from the checkpoint of step 3."""
    args = [*TINY_RUN, *ALL_ON, "--max_steps", "7", "--save_strategy", "steps", "--save_steps", "3"]
    straight = tmp_path / "straight"
    runner.main([*args, "--output_dir", str(straight)])

    class Interrupted(Exception):
        pass

    original_step = runner.DartTrainer.training_step

    def crash_after_five(self, *a, **kw):
        if self.state.global_step == 5:
            raise Interrupted
        return original_step(self, *a, **kw)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(runner.DartTrainer, "training_step", crash_after_five)
    with pytest.raises(Interrupted):
        runner.main([*args, "--output_dir", str(resumed)])
    monkeypatch.setattr(runner.DartTrainer, "training_step", original_step)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (resumed / "model.safetensors").exists()
    runner.main([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", "last"])

    for name in ("model.safetensors", "ema/model.safetensors", "checkpoint-6/model.safetensors",
                 "checkpoint-6/model_ema.safetensors"):
        expected, actual = load_file(straight / name), load_file(resumed / name)
        assert expected.keys() == actual.keys()
        different = [key for key in expected if not torch.equal(expected[key], actual[key])]
        assert not different, f"{name}: {different[:5]}"
    losses = [json.loads((folder / "trainer_state.json").read_text())["log_history"] for folder in (straight, resumed)]
    assert [e["loss"] for e in losses[0] if "loss" in e] == [e["loss"] for e in losses[1] if "loss" in e]
    # the weights did move, and the EMA differs from them
    first = load_file(straight / "checkpoint-3" / "model.safetensors")
    last = load_file(straight / "model.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in last)


# ---------------------------------------------------------------------------------------------- streaming
@pytest.fixture(scope="module")
def parquet_dataset(tmp_path_factory, runner):
    """A local dataset of parquet shards (2 for training, 1 for validation), as `datasets` lays out Hub datasets."""
    from datasets import load_dataset

    folder = tmp_path_factory.mktemp("parquet_dataset")
    source = load_dataset("imagefolder", data_files={"train": str(DATA / "train" / "**"),
                                                     "validation": str(DATA / "validation" / "**")},
                          cache_dir=str(folder / "cache"))
    (folder / "data").mkdir()
    train = source["train"].shuffle(seed=0).select(range(48))
    for i in range(2):
        train.shard(2, i, contiguous=True).to_parquet(str(folder / "data" / f"train-0000{i}-of-00002.parquet"))
    source["validation"].shuffle(seed=0).select(range(12)).to_parquet(
        str(folder / "data" / "validation-00000-of-00001.parquet"))
    shutil.rmtree(folder / "cache")
    return folder


STREAM_RUN = ["--config_overrides", TINY_MODEL, "--crop_pct", "1.0", "--streaming", "true", "--shuffle_buffer_size",
              "16", "--do_train", "true", "--do_eval", "true", "--per_device_train_batch_size", "4",
              "--per_device_eval_batch_size", "6", "--max_steps", "3", "--save_strategy", "no", "--report_to", "none",
              "--logging_steps", "1", "--dataloader_num_workers", "0", "--rand_augment", "rand-m9-mstd0.5-inc1",
              "--mixup", "0.8", "--cutmix", "1.0", "--label_smoothing_factor", "0.1"]


@pytest.mark.parametrize("source", ["parquet", "imagefolder"])
def test_streaming_in_one_process(runner, parquet_dataset, tmp_path, source):
    from datasets import IterableDataset

    data = (["--dataset_name", str(parquet_dataset)] if source == "parquet" else
            ["--train_dir", str(DATA / "train"), "--validation_dir", str(DATA / "validation"), "--max_eval_samples", "12"])

    captured = {}
    original_init = runner.DartTrainer.__init__

    def spy(self, *a, **kw):
        captured["train"], captured["eval"] = kw["train_dataset"], kw["eval_dataset"]
        original_init(self, *a, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner.DartTrainer, "__init__", spy)
        metrics = runner.main([*data, *STREAM_RUN, "--output_dir", str(tmp_path / "s")])
    assert isinstance(captured["train"], IterableDataset) and isinstance(captured["eval"], IterableDataset)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "train_samples" not in metrics
    state = json.loads((tmp_path / "s" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert len(config["id2label"]) == 10  # the labels come from the ClassLabel feature, not from reading the stream


def test_streaming_run_resumed_gives_the_same_weights(runner, parquet_dataset, tmp_path):
    """Streaming too: 5 steps over the parquet shards (48 images, batch 4: within the first pass) in one go, against
    a run whose last checkpoint is step 3, resumed with `--resume_from_checkpoint` (the Trainer skips the batches
    already seen; every augmentation draw comes from `(seed, epoch, copy, index)`), bit for bit."""
    args = ["--dataset_name", str(parquet_dataset), *STREAM_RUN, "--max_steps", "5", "--save_strategy", "steps",
            "--save_steps", "3", "--do_eval", "false"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    runner.main([*args, "--output_dir", str(straight)])
    runner.main([*args, "--output_dir", str(resumed)])
    shutil.rmtree(resumed / "checkpoint-5")  # as if the run had stopped after step 4
    (resumed / "model.safetensors").unlink()
    runner.main([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", str(resumed / "checkpoint-3")])
    expected, actual = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    halfway = load_file(resumed / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(halfway[key], expected[key]) for key in expected)
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, different


def test_streaming_needs_max_steps_and_a_validation_split(runner, parquet_dataset):
    with pytest.raises(ValueError, match="max_steps"):
        runner.main(["--dataset_name", str(parquet_dataset), *STREAM_RUN, "--max_steps", "-1", "--output_dir", "x"])
    with pytest.raises(ValueError, match="repeated_augmentation"):
        runner.parse_args(["--dataset_name", str(parquet_dataset), *STREAM_RUN, "--repeated_augmentation", "3",
                           "--output_dir", "x"])


def test_streaming_in_two_processes(parquet_dataset, tmp_path, offline_env):
    output = tmp_path / "stream2"
    result = _launch_two_processes(["--multi_gpu"], ["--dataset_name", str(parquet_dataset), *STREAM_RUN,
                                                     "--ddp_find_unused_parameters", "false", "--output_dir",
                                                     str(output)], offline_env)
    assert "world_size: 2" in result.stdout + result.stderr
    assert json.loads((output / "all_results.json").read_text())["world_size"] == 2
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3


def test_repeated_augmentation_and_ema_in_two_processes(tmp_path, offline_env):
    """Each process draws its own share of the repeated-augmentation sampler (the Trainer's sharding is off): with
    24 images, batch 4 and 2 processes an epoch is 24 // 2 / 4 = 3 steps, so 4 steps reach epoch 4/3."""
    output = tmp_path / "ra2"
    _launch_two_processes(["--multi_gpu"], [*TINY_RUN, *ALL_ON, "--max_steps", "4", "--do_eval", "true",
                                            "--ddp_find_unused_parameters", "false", "--output_dir", str(output)],
                          offline_env)
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["epoch"] == pytest.approx(4 / 3)
    results = json.loads((output / "all_results.json").read_text())
    assert results["world_size"] == 2 and "eval_ema_accuracy" in results
    assert (output / "ema" / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------- distributed configs
def test_fsdp_config_as_accelerate_reads_it(tmp_path, monkeypatch):
    """The FSDP config through accelerate's own launcher code (config file -> environment -> plugin) and its wrap
    policy on DART's ViT and Vim models: the blocks, the embeddings with the scorer and the patch projection become
    FSDP units."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import (
        _validate_launch_command,
        launch_command_parser,
    )
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    from modeling_dart import DartForImageClassification
    from tests.conftest import tiny_config

    config_file = CONFIGS / "fsdp.yaml"
    config = load_config_from_file(str(config_file))
    assert config.distributed_type == DistributedType.FSDP and config.fsdp_config["fsdp_version"] == 2
    args = launch_command_parser().parse_args(["--config_file", str(config_file), "--num_processes", "2",
                                               "--mixed_precision", "no", str(SCRIPT)])
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    for backbone, block in (("vit", "DartLayer"), ("vim", "DartMambaBlock")):
        model = DartForImageClassification(tiny_config(backbone=backbone, num_hidden_layers=2))
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2
        plugin.set_auto_wrap_policy(model)
        wraps = {type(m).__name__ for m in model.modules() if plugin.auto_wrap_policy(m, False, 0)}
        # the patch projection first: accelerate shards the input embedding as a unit of its own
        assert wraps == {block, "DartEmbeddings", "DartPatchProjection"}, wraps


def test_fsdp2_shards_dart_on_two_cpu_processes(tmp_path, offline_env):
    """This torch runs FSDP2 on CPU with gloo: DART's blocks sharded as the config wraps them train one step to the
    weights of one process training on the whole batch."""
    probe = REPO_ROOT / "tests" / "fsdp_cpu_probe.py"
    result = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                   str(_free_port()), str(probe), str(tmp_path)], offline_env, timeout=300)
    report = json.loads((tmp_path / "fsdp_probe.json").read_text())
    assert report["world_size"] == 2 and report["sharded"], result.stdout[-2000:]
    # float32 rounding of the two half-batch gradients averaged (a summed or unsynchronised gradient moves by ~moved)
    assert report["max_weight_difference"] < 1e-5 < 1e-3 * report["weights_moved"], report


def test_fsdp_config_trains_through_accelerate_on_two_cpu_processes(tmp_path, offline_env):
    """`accelerate launch --config_file fsdp.yaml` on 2 CPU processes really shards (accelerate alone would run it as
    DDP on CPU; `fsdp_on_cpu` in the script lets its FSDP2 path run there): the model trains through accelerate's
    FSDP2 preparation, gathering and saving, to the weights a DDP run of the same command reaches (plain SGD, no
    clipping: the averaged gradients are the same numbers), and the saved folder is a normal DART folder (full
    weights, DART's own remote code: FSDP's wrapper class once put torch's FSDP files and its own name there)."""
    sgd = ["--optim", "sgd", "--learning_rate", "0.5", "--max_grad_norm", "0", "--max_steps", "3", "--do_eval", "true"]
    # the quick start's saliency head: FSDP2 refused its parameters while they were 0-d
    saliency = [TINY_MODEL + ",scorer_head=saliency" if arg == TINY_MODEL else arg for arg in TINY_RUN]
    runs = {}
    for name, launch in (("fsdp", ["--config_file", str(CONFIGS / "fsdp.yaml")]), ("ddp", ["--multi_gpu"])):
        output = tmp_path / name
        _launch_two_processes(launch, [*saliency, *sgd, "--ddp_find_unused_parameters", "false", "--output_dir",
                                       str(output)], offline_env)
        runs[name] = output
    results = {name: json.loads((output / "all_results.json").read_text()) for name, output in runs.items()}
    assert results["fsdp"]["distributed_type"] == "FSDP" and results["ddp"]["distributed_type"] == "MULTI_CPU"
    assert results["fsdp"]["world_size"] == results["ddp"]["world_size"] == 2
    sharded, reference = (load_file(runs[name] / "model.safetensors") for name in ("fsdp", "ddp"))
    assert sharded.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(sharded[key], reference[key], atol=1e-6, rtol=0, msg=key)
    assert sharded["dart.embeddings.scorer.log_temperature"].shape == (1,)
    config = json.loads((runs["fsdp"] / "config.json").read_text())
    assert config["scorer_head"] == "saliency"
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_dart.DartForImageClassification"
    assert config["architectures"] == ["DartForImageClassification"]
    files = {path.name for path in runs["fsdp"].iterdir()}
    assert {"modeling_dart.py", "embeddings_dart.py"} <= files and not any(f.startswith("_fsdp") for f in files)


def test_fsdp_resume_on_two_cpu_processes_is_exact(tmp_path, offline_env):
    """Under the FSDP config on 2 CPU processes, a DART-Vim run interrupted after its step-2 checkpoint and resumed
    with `--resume_from_checkpoint` ends with the weights of the uninterrupted run, bit for bit (AdamW, whose state
    the checkpoint carries as a full optimizer state dict)."""
    vim = TINY_MODEL.replace("num_attention_heads=2,", "") + ",backbone=vim"
    common = [*TINY_RUN, "--config_overrides", vim, "--optim", "adamw_torch", "--max_steps", "4",
              "--save_strategy", "steps", "--save_steps", "2"]

    def launch(output, *extra):
        _launch_two_processes(["--config_file", str(CONFIGS / "fsdp.yaml")],
                              [*common, "--output_dir", str(output), *extra], offline_env)

    launch(tmp_path / "whole")
    interrupted = tmp_path / "interrupted"
    launch(interrupted)
    shutil.rmtree(interrupted / "checkpoint-4")  # as if the run had stopped after step 3
    (interrupted / "model.safetensors").unlink()
    launch(interrupted, "--resume_from_checkpoint", str(interrupted / "checkpoint-2"))
    resumed, whole = (load_file(folder / "model.safetensors") for folder in (interrupted, tmp_path / "whole"))
    halfway = load_file(interrupted / "checkpoint-2" / "model.safetensors")
    assert json.loads((interrupted / "all_results.json").read_text())["distributed_type"] == "FSDP"
    assert any(not torch.equal(halfway[key], whole[key]) for key in whole)  # steps 3 and 4 moved the weights
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_deepspeed_zero2_config_is_complete(tmp_path):
    """Documented, not run here (DeepSpeed is not installed on these CPU machines): the accelerate config is a
    DeepSpeed one pointing at a ZeRO-2 file whose batch / clipping / precision values come from the Trainer
    ("auto") and which leaves the optimizer and scheduler (DeiT's AdamW + cosine, layer decay) to the Trainer."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    ds_file = REPO_ROOT / config.deepspeed_config["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert "optimizer" not in ds and "scheduler" not in ds
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert ds[key] == "auto", key
    assert ds["bf16"]["enabled"] == "auto"


def test_recipe_arguments_are_validated(runner):
    base = [*TINY_DATA[:4], "--output_dir", "x"]
    for extra, name in ((["--rand_augment", "randaug"], "rand_augment"), (["--random_erasing", "2"], "random_erasing"),
                        (["--mixup", "-1"], "mixup"), (["--repeated_augmentation", "0"], "repeated_augmentation"),
                        (["--layer_decay", "1.5"], "layer_decay"), (["--model_ema_decay", "1"], "model_ema_decay"),
                        (["--base_batch_size", "0"], "base_batch_size"),
                        (["--train_dir", str(DATA / "no_such_split")], "train_dir"),
                        (["--validation_dir", str(DATA / "train" / "no_such_class")], "validation_dir")):
        with pytest.raises(ValueError, match=name):
            runner.parse_args([*base, *extra])
    assert math.isfinite(runner.parse_args(base)[2].learning_rate)


def test_gradient_accumulation_matches_one_large_batch(runner, tmp_path):
    """Losses are batch means that the Trainer divides over accumulation steps (DART's forward takes **kwargs, which
    would otherwise make the Trainer think the model normalises the loss itself): 2 x 4 accumulated == 1 x 8. The
    scorer trunk is frozen so that no BatchNorm sees the batch size."""
    runs = {}
    for name, extra in (("large", ["--per_device_train_batch_size", "8"]),
                        ("accumulated", ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"])):
        runner.main([*TINY_RUN, *extra, "--freeze_scorer_trunk", "true", "--max_steps", "1", "--optim", "sgd",
                     "--learning_rate", "0.5", "--warmup_steps", "0", "--max_grad_norm", "0",  # clipping would hide a factor
                     "--output_dir", str(tmp_path / name)])
        runs[name] = load_file(tmp_path / name / "model.safetensors")
    large, accumulated = runs["large"], runs["accumulated"]
    floats = [key for key in large if large[key].is_floating_point()]
    assert max(float((large[k] - accumulated[k]).abs().max()) for k in floats) < 1e-5
    assert float(large["classifier.bias"].abs().max()) > 1e-3  # the step moved the weights (biases start at zero)


def test_image_size_and_drop_path_on_a_built_model(runner):
    from modeling_dart import DartForImageClassification, DartImageProcessor
    from modeling_dart.layers_dart import DartDropPath
    from tests.conftest import tiny_config

    processor = DartImageProcessor()  # 512 -> 448, DeiT's 0.875
    runner.resize_processor(processor, 224)
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    squash = DartImageProcessor(size={"height": 224, "width": 224}, crop_size={"height": 224, "width": 224})
    runner.resize_processor(squash, 448)
    assert squash.size == {"height": 448, "width": 448}
    for backbone in ("vit", "vim"):
        model = DartForImageClassification(tiny_config(backbone=backbone, num_hidden_layers=3))
        runner.set_drop_path_rate(model, 0.1)
        rates = [m.drop_prob for m in model.modules() if isinstance(m, DartDropPath)]
        assert rates == pytest.approx([0.0, 0.05, 0.1]) and model.config.drop_path_rate == 0.1
