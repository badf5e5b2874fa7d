#!/usr/bin/env python
"""Fine-tune a DART model (or train one from scratch) for image classification with the 🤗 Trainer.

In the style of Transformers' `examples/pytorch/image-classification/run_image_classification.py`, for DART
(Differentiable Dynamic Adaptive Region Tokenizer, arXiv 2506.10390): a small scoring network predicts where the
content is and the tokens are cut finer there.

Data: a Hub dataset (`--dataset_name`) or local `imagefolder` directories (`--train_dir` / `--validation_dir`, one
sub-folder per class). Preprocessing uses the DART image processor (PIL backend, no torchvision): a random resized
crop + horizontal flip for training, resize + centre crop for evaluation.

Quick start on the bundled data (2 CPU cores, a few minutes):

    python examples/run_image_classification.py --preset quickstart

Several processes on CPU (gloo DDP; the script sets `use_cpu=True` when no GPU is present):

    accelerate launch --multi_gpu --num_processes 2 examples/run_image_classification.py --preset quickstart

FSDP2 (`examples/accelerate_configs/fsdp.yaml`; on CPU add `--num_processes 2 --mixed_precision no`: accelerate alone
would run it as DDP there, `fsdp_on_cpu` below lets its FSDP2 path run). Every score head shards; `--model_ema` is
refused (the weights are sharded):

    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml examples/run_image_classification.py \
        --preset deit_imagenet --model_ema false --train_dir ... --validation_dir ...

DART's second form, the image reshaper in front of any image classifier (`DartReshaperForImageClassification`),
from scratch: `--model_type dart_reshaper` with `--backbone_config` (an RMT preset, a config.json or a JSON object),
or `--config_name` pointing to a `dart_reshaper` config.json; `--config_overrides` sets the reshaper's fields and,
as `backbone_config.FIELD=value`, its classifier's:

    python examples/run_image_classification.py --model_type dart_reshaper --backbone_config rmt_t3 \
        --config_overrides image_size=160,score_grid_size=20 --scorer_trunk_weights efficientnet_lite0 \
        --train_dir data/train --validation_dir data/validation --output_dir outputs/my-reshaper --do_train --do_eval

On a new model, `--scorer_trunk_weights efficientnet_lite0` also brings the recommended scorer: that trunk, frozen,
with the `saliency` head; for token models, `token_geometry_embedding` and the `mil` head instead, on the trunk cut at
depth 12: a multiple-instance classifier trained on the labels whose attention places the tokens, pre-trained alone
for `--scorer_pretrain_steps` and then trained at `--scorer_learning_rate` (by default 3x `--learning_rate`); fields
given in `--config_overrides` or `--config_name` win (`implied_scorer_fields`).

Fine-tune a saved DART folder (token or reshaper form) on your own data with a new head:

    python examples/run_image_classification.py --model_name_or_path path/to/dart-folder \
        --train_dir data/train --validation_dir data/validation --ignore_mismatched_sizes true \
        --output_dir outputs/my-dart --do_train --do_eval --num_train_epochs 5 --learning_rate 1e-4

The DeiT recipe of the original DART release (448 input, total batch 256, 300 epochs, AdamW, cosine, RandAugment,
mixup/cutmix, label smoothing, random erasing, repeated augmentation, EMA), on 8 GPUs:

    accelerate launch --multi_gpu --num_processes 8 examples/run_image_classification.py --preset deit_imagenet \
        --train_dir imagenet/train --validation_dir imagenet/val --bf16 true

Each element has its own switch (`--mixup`, `--cutmix`, `--label_smoothing_factor`, `--rand_augment`,
`--random_erasing`, `--repeated_augmentation`, `--model_ema`, `--layer_decay`, `--scale_lr_by_batch`); they are
written on PIL + torch in `deit_recipe.py`. Large datasets: `--streaming true` reads `--dataset_name` / `--train_dir`
as an IterableDataset (train with `--max_steps`). `--resume_from_checkpoint last` continues an interrupted run exactly.

Output folder: a run writes into a temporary folder beside `--output_dir` and moves it into place when it succeeds
(a run that fails after saving checkpoints leaves them in `--output_dir`, to resume from). A non-empty `--output_dir`
needs `--overwrite_output_dir true`, which replaces the files the run writes and keeps the others; a resume from a
checkpoint inside `--output_dir` continues there without it. An output folder that holds, or lies inside, an input
(data, model, checkpoint) is refused. Bad arguments and data stop the script with a one-line message and exit code 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from datasets import load_dataset
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

EXAMPLES_DIR = Path(__file__).resolve().parent
try:  # the package installed (`pip install -e .`), or this repository's checkout
    import modeling_dart
except ImportError:  # pragma: no cover - running from a checkout without installing
    sys.path.insert(0, str(EXAMPLES_DIR.parent))
    import modeling_dart  # noqa: F401

from modeling_dart import (
    DartConfig,
    DartForImageClassification,
    DartImageProcessor,
    DartReshaperConfig,
    DartReshaperForImageClassification,
    RmtConfig,
    load_scorer_trunk_weights,
)
from modeling_dart.configuration_reshaper_dart import (
    is_image_classifier_config,
    resolve_backbone_config,
)
from modeling_dart.configuration_rmt import RMT_PRESETS
from modeling_dart.conversion_utils import (
    StagedOutput,
    UsageError,
    check_model_source,
    check_output_dir,
    load_from_hub,
    report_usage_error,
)
from modeling_dart.image_processing_dart import PerWorkerGenerator
from modeling_dart.model_card import write_model_card
from modeling_dart.self_distillation_dart import pretrain_scorer_on_evidence
from modeling_dart.trunks_dart import PACKAGED_WEIGHTS, TRUNKS, recommended_scorer_fields

if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))
from deit_recipe import (  # noqa: E402  (the DeiT recipe, next to this script)
    AugmentedImageDataset,
    MixupCutmix,
    ModelEmaCallback,
    RandAugment,
    RandomErasing,
    RepeatedAugmentationSampler,
    TrainAugmentation,
    parameter_groups,
    scaled_learning_rate,
    soft_target_cross_entropy,
)

logger = logging.getLogger(__name__)

LOCAL_ACCURACY_METRIC = EXAMPLES_DIR / "metrics" / "accuracy"
BUNDLED_DATA = EXAMPLES_DIR / "data" / "sparse_fashion"

# The two forms of DART this script trains, by config model type: the token form and the image reshaper in front of
# an image classifier.
RESHAPER = DartReshaperConfig.model_type
MODEL_CLASSES = {
    DartConfig.model_type: (DartConfig, DartForImageClassification),
    RESHAPER: (DartReshaperConfig, DartReshaperForImageClassification),
}
# `--backbone_config` presets: the released RMT variants
BACKBONE_PRESETS = {f"rmt_{name}": name for name in RMT_PRESETS}
# `--config_overrides backbone_config.FIELD=value` sets a field of a dart_reshaper model's classifier
BACKBONE_PREFIX = "backbone_config."

# ----------------------------------------------------------------------------------------------------- presets
# A preset is a list of command-line arguments put BEFORE the user's own, so any explicit argument overrides it.
QUICKSTART_CONFIG = {
    "image_size": 160,
    "patch_size": 16,
    # 8-pixel score cells: fine enough to outline a 28-42 pixel article (the position table is 20x20 too)
    "score_grid_size": 20,
    "num_tokens": 36,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    # the scorer and token geometry come from the preset's `--scorer_trunk_weights efficientnet_lite0`
    # (implied_scorer_fields); `examples/quickstart.py` takes the saliency head for speed (QUICKSTART_DEMO_SCORER)
}


# what the recommended scorer adds for a token model (`dart`): the embedding of each token's centre, size and rank,
# and the mil head on the trunk's depth-12 features, a multiple-instance classifier trained on the labels whose
# attention (averaged over 3x3 score cells, square-rooted) places the tokens (`DartConfig.scorer_head`;
# benchmarks/README.md, "#23 fifth round")
TOKEN_MODEL_SCORER_FIELDS = {"token_geometry_embedding": True, "scorer_head": "mil", "scorer_trunk_depth": 12,
                             "scorer_attention_power": 0.5, "scorer_attention_spread": 3}


def implied_scorer_fields(weights: str | None, model_type: str, *given: dict[str, Any]) -> dict[str, Any]:
    """The recommended scorer that packaged `--scorer_trunk_weights` bring to a NEW model (`recommended_scorer_fields`:
    that trunk, frozen, the `saliency` head), and for a token model (`dart`) `TOKEN_MODEL_SCORER_FIELDS`: the token
    geometry embedding, the mil head in place of the saliency head and the trunk cut at depth 12; less the fields of
    `given` (the user's overrides, `--config_name`'s fields; a `scorer_evidence_weight` > 0 there keeps the saliency
    head it trains), and nothing at all where they choose the trunk or a scorer other than a learned one: their
    choice then stands, and `check_model_options` refuses weights that do not fit it."""
    fields = recommended_scorer_fields(weights, *given)
    if fields and model_type == DartConfig.model_type:
        token_fields = dict(TOKEN_MODEL_SCORER_FIELDS)
        if any(float(chosen.get("scorer_evidence_weight", 0.0)) > 0 for chosen in given):
            token_fields.pop("scorer_head")
        fields.update({key: value for key, value in token_fields.items()
                       if not any(key in chosen for chosen in given)})
    return fields


PRESETS: dict[str, list[str]] = {
    "quickstart": [
        "--train_dir", str(BUNDLED_DATA / "train"),
        "--validation_dir", str(BUNDLED_DATA / "validation"),
        "--config_overrides", ",".join(f"{k}={v}" for k, v in QUICKSTART_CONFIG.items()),
        "--scorer_trunk_weights", "efficientnet_lite0",
        "--crop_pct", "1.0",
        # the whole canvas (a crop could cut the article away), flipped half the time
        "--min_crop_scale", "1.0",
        "--output_dir", "outputs/quickstart",
        "--do_train", "true",
        "--do_eval", "true",
        "--num_train_epochs", "20",  # 1260 steps: the quick start stays within 5 minutes on 2 cores
        # soft targets: 63.1% against 58.5% without, otherwise the same 20-epoch run (one seed each)
        "--label_smoothing_factor", "0.1",
        "--learning_rate", "1e-3",
        "--weight_decay", "0.05",
        "--warmup_steps", "0.1",
        "--lr_scheduler_type", "cosine",
        "--per_device_train_batch_size", "64",
        "--per_device_eval_batch_size", "250",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "50",
        "--ddp_find_unused_parameters", "false",
        "--seed", "0",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
    ],
    # The original DART DeiT recipe: DeiT's `main.py` defaults as DART's scripts use them, at 448 input and a total
    # batch of 256 (8 GPUs x 32). The learning rate 5e-4 is scaled by total batch / 512 (DeiT's rule) -> 2.5e-4.
    # Schedules run per step here (DeiT's timm scheduler steps per epoch): 5 warm-up epochs from 1e-6 (a rate of
    # 0.004 of 2.5e-4), cosine to 1e-5 at epoch 300. Data and precision are the user's: add --train_dir /
    # --validation_dir (or --dataset_name [--streaming true]) and e.g. --bf16 true. The scorer trunk should be a
    # pretrained one (start from a DART folder, e.g. one written by conversion/convert_vit_to_dart.py).
    "deit_imagenet": [
        "--image_size", "448",
        "--crop_pct", "0.875",
        "--drop_path_rate", "0.1",
        "--output_dir", "outputs/deit_imagenet",
        "--do_train", "true",
        "--do_eval", "true",
        "--num_train_epochs", "300",
        "--total_train_batch_size", "256",
        "--per_device_eval_batch_size", "64",
        "--learning_rate", "5e-4",
        "--scale_lr_by_batch", "true",
        "--base_batch_size", "512",
        "--optim", "adamw_torch",
        "--adam_beta1", "0.9",
        "--adam_beta2", "0.999",
        "--adam_epsilon", "1e-8",
        "--weight_decay", "0.05",
        "--layer_decay", "1.0",
        "--max_grad_norm", "0",
        "--lr_scheduler_type", "cosine_warmup_with_min_lr",
        "--lr_scheduler_kwargs", '{"min_lr": 1e-05, "warmup_lr_rate": 0.004}',
        "--warmup_steps", str(5 / 300),
        "--label_smoothing_factor", "0.1",
        "--mixup", "0.8",
        "--cutmix", "1.0",
        "--mixup_prob", "1.0",
        "--mixup_switch_prob", "0.5",
        "--rand_augment", "rand-m9-mstd0.5-inc1",
        "--random_erasing", "0.25",
        "--random_erasing_mode", "pixel",
        "--random_erasing_count", "1",
        "--repeated_augmentation", "3",
        "--min_crop_scale", "0.08",
        "--hflip_probability", "0.5",
        "--model_ema", "true",
        "--model_ema_decay", "0.99996",
        "--dataloader_drop_last", "true",
        "--dataloader_num_workers", "10",
        "--eval_strategy", "epoch",
        "--save_strategy", "epoch",
        "--save_total_limit", "2",
        "--logging_steps", "100",
        "--ddp_find_unused_parameters", "false",
        "--seed", "0",
        "--report_to", "none",
    ],
}


# ------------------------------------------------------------------------------------------------- arguments
@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on, and how to preprocess it."""

    preset: str | None = field(
        default=None,
        metadata={"help": f"Fill in defaults for a known setting ({', '.join(PRESETS)}); explicit arguments win."},
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Name of a dataset on the Hub (needs the network), e.g. `beans`."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of training images, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images, one sub-folder per class."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the training set held out when there is no validation split."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many training examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only this many evaluation examples (debugging, quick runs)."}
    )
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column holding the labels."})
    min_crop_scale: float = field(
        default=0.08,
        metadata={"help": "Training augmentation: smallest area fraction of the random resized crop (DeiT: 0.08)."},
    )
    hflip_probability: float = field(default=0.5, metadata={"help": "Training augmentation: horizontal flip probability."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read --dataset_name / --train_dir / --validation_dir as an IterableDataset (datasets' "
                  "`streaming=True`) instead of preparing it on disk; train with --max_steps."},
    )
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Streaming: size of the shuffle buffer."})
    rand_augment: str | None = field(
        default=None, metadata={"help": "RandAugment policy on the PIL crops, e.g. `rand-m9-mstd0.5-inc1` (DeiT)."}
    )
    random_erasing: float = field(
        default=0.0, metadata={"help": "Probability of random erasing after normalisation (DeiT: 0.25)."}
    )
    random_erasing_mode: str = field(default="pixel", metadata={"help": "Erased values: pixel (DeiT), rand or const."})
    random_erasing_count: int = field(default=1, metadata={"help": "Rectangles erased per image (DeiT: 1)."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha; 0 disables it (DeiT: 0.8)."})
    cutmix: float = field(default=0.0, metadata={"help": "CutMix alpha; 0 disables it (DeiT: 1.0)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch (DeiT: 1.0)."})
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "With both mixup and cutmix on: probability of cutmix for a batch (DeiT: 0.5)."}
    )
    repeated_augmentation: int = field(
        default=1,
        metadata={"help": "Augmented copies of each image per epoch, spread over the processes (repeated "
                  "augmentation; DeiT: 3). 1 is a plain shuffle."},
    )

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:  # a JSON file of arguments reaches this too
            raise UsageError(_unknown_preset(self.preset))
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise UsageError(
                "Give a dataset: `--dataset_name` (Hub), or `--train_dir` / `--validation_dir` (local imagefolder), "
                "or `--preset quickstart` for the bundled data."
            )
        for name in ("train_dir", "validation_dir"):  # datasets' own message ("... corresponds to no data") names none
            folder = getattr(self, name)
            # local folders only: a remote one (`hf://...`, `s3://...`) is datasets' to resolve
            if folder is not None and "://" not in folder and not os.path.isdir(folder):
                raise UsageError(f"`--{name}` must be a folder of images, one sub-folder per class; {folder!r} is not "
                                 "a folder.")
        if not 0 < self.train_val_split < 1:  # also refuses NaN
            raise UsageError(f"`--train_val_split` must be a fraction in (0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"`--{name}` must be a positive number of examples, got {value}.")
        if not 0 < self.min_crop_scale <= 1:
            raise UsageError(f"`--min_crop_scale` must be in (0, 1], got {self.min_crop_scale}.")
        if not 0 <= self.hflip_probability <= 1:  # also refuses NaN
            raise UsageError(f"`--hflip_probability` is a probability in [0, 1], got {self.hflip_probability}.")
        try:
            if self.rand_augment is not None:
                RandAugment(self.rand_augment)  # raises a ValueError naming `rand_augment` for a bad policy
            RandomErasing(self.random_erasing, self.random_erasing_mode, self.random_erasing_count)  # validates them
            MixupCutmix(1, self.mixup, self.cutmix, self.mixup_prob, self.mixup_switch_prob, 0.0)  # validates them
        except ValueError as error:
            raise UsageError(str(error)) from error
        if self.repeated_augmentation < 1:
            raise UsageError(f"`--repeated_augmentation` must be >= 1, got {self.repeated_augmentation}.")
        if self.shuffle_buffer_size < 1:
            raise UsageError(f"`--shuffle_buffer_size` must be >= 1, got {self.shuffle_buffer_size}.")
        if self.streaming and self.repeated_augmentation > 1:
            raise UsageError("`--repeated_augmentation` needs a map-style dataset; it cannot be used with --streaming.")


@dataclass
class ModelArguments:
    """Which model/config/image processor to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved DART folder (or Hub id) to fine-tune, token or reshaper form (its config's model "
                  "type picks the class). Leave unset to train from a fresh config."},
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": f"From scratch: the model to build, {' or '.join(MODEL_CLASSES)} (the image reshaper in "
                  "front of the classifier of --backbone_config). Unset: the model type of --config_name, else "
                  f"{RESHAPER} when --backbone_config is given, else dart."},
    )
    backbone_config: str | None = field(
        default=None,
        metadata={"help": f"From scratch, {RESHAPER}: the image classifier behind the reshaper: an RMT preset "
                  f"({', '.join(BACKBONE_PRESETS)}), a JSON object with its model_type (e.g. "
                  '`{"model_type": "convnext", "depths": [2, 2, 6, 2]}`), a config.json file or a folder holding one, '
                  "or a Hub id (its config only: the weights start random). Default: RMT-T3."},
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "A config folder or `config.json` path, when it differs from the model's; from scratch, its "
                  "model_type (dart or dart_reshaper) picks the model."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override config values, e.g. `hidden_size=128,num_hidden_layers=4,scorer=uniform`; for a "
            "dart_reshaper model its own fields and its classifier's as `backbone_config.FIELD=value`. From "
            "scratch any field; on a pretrained model only fields that leave the weights' shapes alone."
        },
    )
    num_tokens: int | None = field(
        default=None, metadata={"help": "Number of adaptive tokens (config `num_tokens`; token DART only)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Input resolution (config `image_size`): the processor crops this size and resizes to "
                  "image_size / crop_pct (for a pretrained folder, its own resize/crop ratio)."},
    )
    drop_path_rate: float | None = field(
        default=None,
        metadata={"help": "Stochastic depth rate (config `drop_path_rate`, for a dart_reshaper model its classifier's "
                  "`backbone_config.drop_path_rate`; DeiT: 0.1)."}
    )
    freeze_scorer_trunk: bool | None = field(
        default=None,
        metadata={"help": "Freeze the scorer's trunk (config `freeze_scorer_trunk`); unset keeps the config's."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor folder/Hub id, when it differs from the model's."}
    )
    crop_pct: float = field(
        default=0.875,
        metadata={
            "help": "From-scratch image processor: resize the shorter side to image_size / crop_pct, then centre-crop "
            "image_size (DeiT: 0.875; 1.0 keeps the whole image)."
        },
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a classifier head of a different size (new labels): it is re-initialised."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (or `hf auth login`)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from the Hub (not needed with `modeling_dart` installed)."}
    )
    scorer_trunk_weights: str | None = field(
        default=None,
        metadata={"help": "Pretrained weights for the scorer's trunk: `efficientnet_lite0` (the ImageNet weights of "
                  "the `pretrained` extra; a new model then gets the recommended scorer: that trunk, frozen, the "
                  "`saliency` head, and for token models token geometry and the `mil` head at trunk depth 12, "
                  "unless `--config_overrides` says otherwise) or a .pth state "
                  "dict (torchvision MobileNetV3 `features.*` names, or EfficientNet-PyTorch Lite0 names)."},
    )

    def __post_init__(self):
        if self.model_type is not None and self.model_type not in MODEL_CLASSES:
            raise UsageError(f"`--model_type` must be one of {', '.join(MODEL_CLASSES)}, got {self.model_type!r}.")
        if not 0 < self.crop_pct <= 1:  # also refuses NaN; above 1 the crop would be padded with black borders
            raise UsageError(f"`--crop_pct` must be in (0, 1] (the crop's share of the resized image: 0.875 for DeiT, "
                             f"1.0 for the whole image), got {self.crop_pct}.")


@dataclass
class DartTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the DeiT recipe's optimisation switches."""

    model_ema: bool = field(
        default=False,
        metadata={"help": "Keep an exponential moving average of the weights; saved to <output_dir>/ema and "
                  "evaluated (DeiT: on)."},
    )
    model_ema_decay: float = field(default=0.99996, metadata={"help": "EMA decay per optimizer step (DeiT: 0.99996)."})
    layer_decay: float | None = field(
        default=None,
        metadata={"help": "Layer-wise learning-rate decay for fine-tuning (e.g. 0.75): block i of L gets lr * "
                  "layer_decay ** (L + 1 - (i + 1)). Any value also applies DeiT's weight-decay rule (none on "
                  "biases, norms, cls token, position tables); 1.0 gives that rule alone."},
    )
    scale_lr_by_batch: bool = field(
        default=False,
        metadata={"help": "Scale --learning_rate by total batch / --base_batch_size (DeiT's linear scaling rule)."},
    )
    base_batch_size: int = field(default=512, metadata={"help": "Batch size --learning_rate is given for (DeiT: 512)."})
    scorer_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the scorer's trainable parameters and of the evidence head (their own "
                  "optimizer group, no weight decay). Default for a new token model with an evidence head: 3x "
                  "--learning_rate with the mil scorer head (the recommended scorer), 10x with "
                  "`scorer_evidence_weight` > 0; else --learning_rate."},
    )
    scorer_pretrain_steps: int | None = field(
        default=None,
        metadata={"help": "Steps that train the scorer and the evidence head alone (`pretrain_scorer_on_evidence`: "
                  "no backbone pass) before the training starts, at --scorer_learning_rate, so that the backbone "
                  "trains on a placement that already follows the evidence. Needs the mil scorer head or "
                  "`scorer_evidence_weight` > 0. Default: 300 for a new token model with either (the recommended "
                  "scorer has the mil head), else 0; skipped when resuming from a checkpoint."},
    )
    total_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Total training batch over all processes and accumulation steps; sets "
                  "--per_device_train_batch_size (DART's DeiT recipe: 256)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir: the files the run writes replace theirs, the others "
                  "are kept. Not needed to resume from a checkpoint inside --output_dir."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.model_ema_decay < 1.0:
            raise UsageError(f"`--model_ema_decay` must be in [0, 1), got {self.model_ema_decay}.")
        if not 0.0 <= self.label_smoothing_factor < 1.0:  # Transformers leaves it unchecked; also refuses NaN
            raise UsageError(f"`--label_smoothing_factor` must be in [0, 1), got {self.label_smoothing_factor}.")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise UsageError(f"`--layer_decay` must be in (0, 1], got {self.layer_decay}.")
        if self.base_batch_size < 1:
            raise UsageError(f"`--base_batch_size` must be a positive integer, got {self.base_batch_size}.")
        if self.scorer_learning_rate is not None and not 0.0 <= self.scorer_learning_rate < float("inf"):
            raise UsageError(f"`--scorer_learning_rate` must be a finite number >= 0, got {self.scorer_learning_rate}.")
        if self.scorer_pretrain_steps is not None and self.scorer_pretrain_steps < 0:
            raise UsageError(f"`--scorer_pretrain_steps` must be an integer >= 0, got {self.scorer_pretrain_steps}.")
        if self.total_train_batch_size is not None:
            shards = self.world_size * self.gradient_accumulation_steps
            if self.total_train_batch_size < 1 or self.total_train_batch_size % shards:
                raise UsageError(
                    f"`--total_train_batch_size` ({self.total_train_batch_size}) must be a positive multiple of "
                    f"world size x gradient accumulation steps ({self.world_size} x {self.gradient_accumulation_steps})."
                )
            self.per_device_train_batch_size = self.total_train_batch_size // shards
        if self.model_ema and self.fsdp:
            raise UsageError("`--model_ema` is not supported with FSDP (the weights are sharded); use DDP or DeepSpeed "
                             "ZeRO-2.")


# ----------------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def fsdp_on_cpu():
    """While the Trainer builds its `Accelerator`: let an FSDP launch (`ACCELERATE_USE_FSDP=true`, e.g.
    `accelerate launch --config_file examples/accelerate_configs/fsdp.yaml`) shard the model on CPU too.

    accelerate (1.16) selects FSDP only on accelerators: on CPU processes it keeps its gloo DDP and silently drops
    the FSDP plugin. torch runs FSDP2 on CPU with gloo, and accelerate's FSDP2 preparation, training step and
    state-dict gathering work there unchanged once its state says FSDP, so this sets that (and logs it). On a machine
    with a GPU, or without an FSDP launch, it does nothing. Tested in `tests/test_training_recipe.py`.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or torch.cuda.is_available():
        yield
        return
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type
            logger.warning("FSDP on CPU: accelerate would run this FSDP launch as DDP; sharding with FSDP%d (gloo).",
                           fsdp_plugin.fsdp_version)

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas that lie outside square brackets (`"a=1,b=[1,2]"` -> `["a=1", "b=[1,2]"]`);
    unbalanced brackets raise a `ValueError` naming `--config_overrides`."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0:
            break
        if char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise ValueError(f"`--config_overrides`: unbalanced square brackets in {text!r}.")
    return [*items, text[start:]]


def parse_override_value(text: str) -> Any:
    """`"true"` -> True, `"none"` -> None, `"12"` -> 12, `"1e-3"` -> 0.001, `"[2,2,6,2]"` -> [2, 2, 6, 2] (a list
    of such values, e.g. a per-stage field of the classifier behind a reshaper), anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if lowered.startswith("[") and lowered.endswith("]"):
        inner = text.strip()[1:-1]
        return [parse_override_value(item) for item in split_top_level(inner)] if inner.strip() else []
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_overrides(spec: str | None) -> dict[str, Any]:
    """`"k=v,k=v"` -> dict with typed values (a value in square brackets is a list: `depths=[2,2,6,2]`)."""
    overrides: dict[str, Any] = {}
    if not spec:
        return overrides
    for item in split_top_level(spec):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"`--config_overrides` expects `key=value` pairs separated by commas, got {item!r}.")
        key, value = item.split("=", 1)
        overrides[key.strip()] = parse_override_value(value)
    return overrides


# Fields that DartConfig derives from others when left unset; re-derive them when their source changes.
_DERIVED = {
    "intermediate_size": ("hidden_size",),
    "time_step_rank": ("hidden_size",),
    "scorer_hidden_size": ("scorer_trunk", "scorer_head"),
    "cls_token_position": ("backbone",),
    "bidirectional_divide_out": ("backbone",),
}


# ModelArguments fields that are config fields too: they join the `--config_overrides` values
_CONFIG_FLAGS = ("num_tokens", "freeze_scorer_trunk", "image_size", "drop_path_rate")


def collect_config_overrides(model_args: Any, config_flags: tuple[str, ...] = _CONFIG_FLAGS
                             ) -> tuple[dict[str, Any], dict[str, str]]:
    """The config values to set (`--config_overrides`, then those of the `config_flags`, such as `--num_tokens`, that
    are given), and the flag that gave each."""
    try:
        overrides = parse_config_overrides(model_args.config_overrides)
    except ValueError as error:
        raise UsageError(str(error)) from error
    flags = dict.fromkeys(overrides, "--config_overrides")
    for name in config_flags:
        if getattr(model_args, name) is not None:
            overrides[name], flags[name] = getattr(model_args, name), f"--{name}"
    return overrides, flags


def _override_flags(flags: dict[str, str] | None, overrides: dict[str, Any], message: str,
                    fallback: str = "`--config_overrides`") -> str:
    """The flags that set the config fields a config error names, e.g. "`--num_tokens`" (`fallback` if none)."""
    named = [(flags or {}).get(key, "--config_overrides") for key in overrides if f"`{key}`" in message]
    return " / ".join(f"`{flag}`" for flag in dict.fromkeys(named)) or fallback


def check_override_fields(config: Any, overrides: dict[str, Any], known: set[str] | None = None,
                          flags: dict[str, str] | None = None, backbone: Any = None) -> None:
    """Refuse an override that is no field of `config` (Transformers would keep it as an attribute that changes
    nothing), suggesting the closest field name. `backbone_config.FIELD` keys name fields of `backbone` (by default
    `config.backbone_config`, a dart_reshaper model's classifier)."""
    backbone = getattr(config, "backbone_config", None) if backbone is None else backbone
    fields = sorted(name for name in vars(config) if not name.startswith("_"))
    for key in overrides:
        flag = (flags or {}).get(key, "--config_overrides")
        if key.startswith(BACKBONE_PREFIX) and backbone is not None:
            field_name = key[len(BACKBONE_PREFIX):]
            if not hasattr(backbone, field_name):
                names = sorted(name for name in vars(backbone) if not name.startswith("_"))
                close = difflib.get_close_matches(field_name, names, n=1)
                hint = f"; did you mean {BACKBONE_PREFIX}{close[0]}?" if close else "."
                raise UsageError(f"`{flag}`: the classifier's {type(backbone).__name__} has no field {field_name!r}"
                                 f"{hint}")
        elif not hasattr(config, key) and key not in (known or ()):
            close = difflib.get_close_matches(key, fields, n=1)
            if backbone is not None and hasattr(backbone, key):  # a field of the classifier behind the reshaper
                hint = f"; it is a field of the classifier's config: `{BACKBONE_PREFIX}{key}=...`."
            else:
                hint = f"; did you mean {close[0]!r}?" if close else " (see the fields of its config.json)."
            raise UsageError(f"`{flag}`: {type(config).__name__} has no field {key!r}{hint}")


def split_backbone_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(the config's own overrides, the classifier's by field name)`: `backbone_config.FIELD` keys go to the
    second."""
    own = {key: value for key, value in overrides.items() if not key.startswith(BACKBONE_PREFIX)}
    backbone = {key[len(BACKBONE_PREFIX):]: value for key, value in overrides.items()
                if key.startswith(BACKBONE_PREFIX)}
    return own, backbone


def override_backbone(backbone: Any, fields: dict[str, Any], flags: dict[str, str] | None = None) -> Any:
    """The classifier configuration `backbone` rebuilt with `fields` set (its own checks run again)."""
    if not fields:
        return backbone
    try:
        return resolve_backbone_config({**backbone.to_dict(), **fields})
    except (ValueError, TypeError) as error:
        keys = {f"{BACKBONE_PREFIX}{key}": value for key, value in fields.items()}
        named = " / ".join(dict.fromkeys(f"`{(flags or {}).get(key, '--config_overrides')}`" for key in keys))
        raise UsageError(f"{named}: {error}") from error


def overrides_for_model_type(model_type: str, overrides: dict[str, Any], flags: dict[str, str]
                             ) -> tuple[dict[str, Any], dict[str, str]]:
    """The overrides as the config of `model_type` takes them: a dart_reshaper model has no tokens (`--num_tokens`
    is refused) and `--drop_path_rate` sets its classifier's rate (`backbone_config.drop_path_rate`)."""
    if model_type != RESHAPER:
        return overrides, flags
    if "num_tokens" in overrides:
        raise UsageError(f"`{flags.get('num_tokens', '--config_overrides')}`: a {RESHAPER} model has no tokens; its "
                         "warped image is image_size / downscale_factor (`--config_overrides downscale_factor=N`) "
                         "or `output_size`.")
    overrides, flags = dict(overrides), dict(flags)
    if flags.get("drop_path_rate") == "--drop_path_rate":
        key = f"{BACKBONE_PREFIX}drop_path_rate"
        overrides[key], flags[key] = overrides.pop("drop_path_rate"), flags.pop("drop_path_rate")
    return overrides, flags


def apply_config_overrides(config: Any, overrides: dict[str, Any], flags: dict[str, str] | None = None) -> None:
    """Set `overrides` on a loaded config (`--model_name_or_path` / `--config_name`), `backbone_config.FIELD` keys on
    a dart_reshaper config's classifier: unknown fields and refused values raise a `UsageError` naming the flag that
    gave them (`flags`: key -> flag, `--config_overrides` by default)."""
    check_override_fields(config, overrides, flags=flags)
    own, backbone = split_backbone_overrides(overrides)
    for key, value in own.items():
        try:
            setattr(config, key, value)  # DartConfig checks a field's type and range as it is set
        except (ValueError, TypeError) as error:
            raise UsageError(f"{_override_flags(flags, {key: value}, f'`{key}`')}: {error}") from error
    if backbone:
        config.backbone_config = override_backbone(config.backbone_config, backbone, flags)
    # the relations between fields
    validate = getattr(config, "_validate_dart", None) or getattr(config, "validate_reshaper", None)
    if validate is not None:
        try:
            validate()
        except (ValueError, TypeError) as error:
            raise UsageError(f"{_override_flags(flags, overrides, str(error))}: {error}") from error


def existing_local_path(text: str) -> Path | None:
    """`text` as an existing local file or folder, else None: a Hub id, a JSON object, or a string that cannot be a
    path (longer than the system allows, or holding a NUL byte) is none."""
    try:
        path = Path(text).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError):
        return None


# keys a saved config.json holds besides the configuration's fields
CONFIG_FILE_KEYS = ("model_type", "transformers_version", "auto_map")


def load_backbone_config(value: str) -> Any:
    """`--backbone_config` -> the configuration of the image classifier behind the reshaper: an RMT preset
    (`BACKBONE_PRESETS`), a JSON object with its `model_type`, a config.json file or a folder holding one, or a Hub id
    (`AutoConfig.from_pretrained`). Anything else, a field that the configuration does not have, or the configuration
    of a model that is no image classifier, raises a one-line `UsageError` naming the flag."""
    text = value.strip()
    # the value as the messages show it: a JSON object can be long, and a message stays on one line
    shown = " ".join(text.split())
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if not text:
        raise UsageError(f"`--backbone_config` is empty; give an RMT preset ({', '.join(BACKBONE_PRESETS)}), a JSON "
                         "object with a model_type, a config.json file or folder, or a Hub id.")
    if text.lower() in BACKBONE_PRESETS:
        return RmtConfig.from_preset(BACKBONE_PRESETS[text.lower()])
    # a JSON object is read as one, never looked up as a path (it can be longer than a file name may be)
    path = None if text.startswith("{") else existing_local_path(text)
    if text.startswith("{") or path is not None:
        if path is not None and path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise UsageError(f"`--backbone_config` {shown}: the folder holds no config.json.")
        try:
            source = json.loads(text if path is None else path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"`--backbone_config` {shown}: not a valid JSON configuration ({error}).") from error
        if not isinstance(source, dict):
            raise UsageError(f"`--backbone_config` {shown}: expected a JSON object with a model_type, got a "
                             f"{type(source).__name__}.")
    else:
        check_model_source("--backbone_config", text)  # a missing local path; else a Hub id
        if "/" not in text or len(text) > 96 or any(char.isspace() for char in text):
            raise UsageError(f"`--backbone_config` {shown!r} is no preset ({', '.join(BACKBONE_PRESETS)}), JSON "
                             "object, config file or folder, nor a Hub id of the form `org/name`.")
        source = load_from_hub("--backbone_config", AutoConfig.from_pretrained, text)
    model_type = source.get("model_type") if isinstance(source, dict) else getattr(source, "model_type", None)
    if model_type in MODEL_CLASSES:
        raise UsageError(f"`--backbone_config` {shown} is a {model_type} config, not the classifier behind the "
                         f"reshaper (e.g. rmt, convnext, swin, resnet); give a {RESHAPER} config as --config_name.")
    try:
        backbone = resolve_backbone_config(source)
    except (ValueError, TypeError) as error:
        raise UsageError(f"`--backbone_config` {shown}: {error}") from error
    require_image_classifier(backbone, f"`--backbone_config` {shown}")
    if isinstance(source, dict):
        refuse_unknown_config_keys(backbone, source, f"`--backbone_config` {shown}")
    return backbone


def refuse_unknown_config_keys(config: Any, fields: dict[str, Any], source: str) -> None:
    """Refuse a key of `fields` (a JSON configuration; the keys of `CONFIG_FILE_KEYS` aside) that `config`'s class
    has no field for, suggesting the closest one: Transformers keeps an unknown key as an attribute that changes
    nothing. `source` names the flag and value in the message."""
    default = type(config)()
    for key in fields:
        if key not in CONFIG_FILE_KEYS and not hasattr(default, key):
            names = sorted(name for name in vars(default) if not name.startswith("_"))
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise UsageError(f"{source}: {type(config).__name__} has no field {key!r}{hint}")


def require_image_classifier(backbone: Any, source: str) -> None:
    """Refuse a reshaper whose model behind it is no image classifier (a segmentation model, say): this script
    trains classifiers."""
    if not is_image_classifier_config(backbone):
        raise UsageError(f"{source}: the model behind the reshaper is a {backbone.model_type} model, not an image "
                         "classifier (an `AutoModelForImageClassification` type such as rmt, convnext, swin, "
                         "resnet); this script trains image classifiers.")


def choose_model_type(requested: str | None, from_config: str | None, config_name: str | None,
                      backbone_config: str | None) -> str:
    """The model type to build from scratch: `--model_type`, else `--config_name`'s, else dart_reshaper with
    `--backbone_config`, else dart; conflicting choices raise a `UsageError`."""
    if from_config is not None and from_config not in MODEL_CLASSES:
        raise UsageError(f"`--config_name` {config_name} holds a {from_config!r} config, not a DART one "
                         f"({' or '.join(MODEL_CLASSES)}); to put that classifier behind the image reshaper: "
                         f"`--model_type {RESHAPER} --backbone_config {config_name}`.")
    if requested is not None and from_config is not None and requested != from_config:
        raise UsageError(f"`--model_type {requested}` differs from the model type {from_config!r} of `--config_name` "
                         f"{config_name}.")
    model_type = requested or from_config or (RESHAPER if backbone_config is not None else DartConfig.model_type)
    if backbone_config is not None and model_type != RESHAPER:
        raise UsageError(f"`--backbone_config` configures the classifier behind the image reshaper, a {RESHAPER} "
                         f"model; this one is {model_type!r} (`--model_type {RESHAPER}`).")
    return model_type


def build_config_from_scratch(config_name: str | None, overrides: dict[str, Any], flags: dict[str, str] | None = None,
                              model_type: str | None = None, backbone_config: str | None = None,
                              scorer_trunk_weights: str | None = None,
                              **label_kwargs) -> DartConfig | DartReshaperConfig:
    """A new config from `--config_name` (if given) and `overrides`: a DartConfig, or a DartReshaperConfig for
    `model_type` dart_reshaper (`--model_type`, `--config_name`'s model type, or `--backbone_config` given; see
    `choose_model_type`) with the classifier of `backbone_config` (`load_backbone_config`; else `--config_name`'s,
    else RMT-T3). Packaged `scorer_trunk_weights` bring the recommended scorer (`implied_scorer_fields`) where the
    user chose none. Unknown fields and refused values raise a `UsageError` naming the flag that gave them (`flags`:
    key -> flag, `--config_overrides` by default)."""
    base: dict[str, Any] = {}
    from_config = None
    if config_name:
        path = Path(config_name)
        base = json.loads((path / "config.json" if path.is_dir() else path).read_text()) if path.exists() else (
            AutoConfig.from_pretrained(config_name).to_dict()
        )
        from_config = base.get("model_type")
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "id2label", "label2id"):
            base.pop(key, None)
    model_type = choose_model_type(model_type, from_config, config_name, backbone_config)
    config_class = MODEL_CLASSES[model_type][0]
    overrides, flags = overrides_for_model_type(model_type, overrides, dict(flags or {}))
    backbone = None
    if model_type == RESHAPER:
        if backbone_config is not None:
            backbone = load_backbone_config(backbone_config)
            base.pop("backbone_config", None)
        else:
            try:
                backbone = resolve_backbone_config(base.pop("backbone_config", None))
            except (ValueError, TypeError) as error:
                raise UsageError(f"`--config_name` {config_name}: {error}") from error
            require_image_classifier(backbone, f"`--config_name` {config_name}")
    check_override_fields(config_class(), overrides, known=set(base), flags=flags, backbone=backbone)
    own, backbone_fields = split_backbone_overrides(overrides)
    for derived, sources in _DERIVED.items():
        if derived not in own and any(source in own for source in sources):
            base.pop(derived, None)
    if backbone is not None:
        base["backbone_config"] = override_backbone(backbone, backbone_fields, flags)
    implied = implied_scorer_fields(scorer_trunk_weights, model_type, base, own)
    try:
        return config_class(**{**implied, **base, **own, **label_kwargs})
    except (ValueError, TypeError) as error:
        fallback = "`--config_overrides` / `--config_name`" if config_name else "`--config_overrides`"
        raise UsageError(f"{_override_flags(flags, own, str(error), fallback)}: {error}") from error


def check_model_options(config: Any, model_args: ModelArguments, training_args: TrainingArguments) -> None:
    """Refuse options that the model of `config` cannot take: `--layer_decay` below 1 for a dart_reshaper model (its
    depths are token DART's blocks), `--scorer_trunk_weights` for a uniform scorer or for another trunk than the
    packaged weights'."""
    layer_decay = getattr(training_args, "layer_decay", None)
    if config.model_type == RESHAPER and layer_decay is not None and layer_decay != 1.0:
        raise UsageError(f"`--layer_decay {layer_decay}`: layer-wise learning-rate decay follows token DART's blocks; "
                         f"a {RESHAPER} model takes `--layer_decay 1.0` (DeiT's weight-decay rule alone) or none.")
    weights = model_args.scorer_trunk_weights
    if weights is None:
        return
    if config.scorer != "learned":
        raise UsageError(f"`--scorer_trunk_weights {weights}`: the model's scorer is {config.scorer!r}, without a "
                         "trunk (`--config_overrides scorer=learned`).")
    if weights in PACKAGED_WEIGHTS and config.scorer_trunk != weights:
        raise UsageError(f"`--scorer_trunk_weights {weights}` holds {weights} weights, but the scorer trunk is "
                         f"{config.scorer_trunk} (`--config_overrides scorer_trunk={weights}`).")


def describe_model(model: torch.nn.Module) -> str:
    """One log line on a built model: its size, the tokens or the warp, and its scorer."""
    config = model.config
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if config.model_type == RESHAPER:
        side = config.output_size or config.image_size // config.downscale_factor
        warped = "x".join(map(str, side)) if isinstance(side, list) else f"{side}x{side}"
        form = (f"DART reshaper ({config.image_size}x{config.image_size} -> {warped}) in front of a "
                f"{config.backbone_config.model_type} classifier")
    else:
        form = f"DART model with {config.num_tokens} tokens"
    scorer = f"scorer={config.scorer}"
    if config.scorer == "learned":
        scorer += f" (trunk {config.scorer_trunk}, head {config.scorer_head})"
    geometry = getattr(config, "token_geometry_embedding", None)
    return (f"{form}: {num_params / 1e6:.2f}M parameters ({num_trainable / 1e6:.2f}M trainable), {scorer}, "
            f"freeze_scorer_trunk={config.freeze_scorer_trunk}"
            + ("" if geometry is None else f", token_geometry_embedding={geometry}"))


def set_scorer_trunk_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the scorer's MobileNetV3 trunk of a built model (and record it in the config)."""
    from modeling_dart.scorer_dart import DartScorer

    for module in model.modules():
        if isinstance(module, DartScorer):
            module.freeze_trunk = frozen
            module.features.requires_grad_(not frozen)
            module.train(module.training)  # a frozen trunk keeps its BatchNorm in eval mode
    model.config.freeze_scorer_trunk = frozen


def set_drop_path_rate(model: torch.nn.Module, rate: float) -> None:
    """Set the stochastic-depth rate of a built model: it rises linearly from 0 (first block) to `rate` (last), as
    DartConfig's `drop_path_rate` does at construction (and record it in the config)."""
    from modeling_dart.layers_dart import DartDropPath

    paths = [m for m in model.modules() if isinstance(m, DartDropPath)]  # one per DeiT layer or Mamba block
    for i, path in enumerate(paths):
        path.drop_prob = rate * i / (len(paths) - 1) if len(paths) > 1 else rate
    model.config.drop_path_rate = rate


def resize_processor(image_processor, image_size: int) -> None:
    """Make a loaded image processor produce `image_size` crops, keeping its resize/crop ratio (e.g. 512/448)."""
    crop = image_processor.crop_size
    crop_height = (crop["height"] if isinstance(crop, dict) else crop.height) if crop is not None else None
    size = image_processor.size
    size = dict(size) if isinstance(size, dict) else {k: getattr(size, k) for k in ("shortest_edge", "height", "width")
                                                     if getattr(size, k, None) is not None}
    reference = crop_height or size.get("height") or size.get("shortest_edge")
    scale = image_size / reference
    image_processor.size = {key: round(value * scale) for key, value in size.items()}
    image_processor.crop_size = {"height": image_size, "width": image_size}


def load_metric(name: str, local_folder: Path, cache_dir: str | None = None):
    """`evaluate.load(name)`, falling back to the local module folder `local_folder` when the Hub is unreachable."""
    import evaluate

    offline = any(
        os.environ.get(variable, "").lower() in ("1", "true", "yes", "on")
        for variable in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline:
        try:
            return evaluate.load(name, cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001  (no network, Hub down, ...: any failure means the fallback)
            logger.warning(f"evaluate.load({name!r}) failed ({type(err).__name__}); using {local_folder}.")
    return evaluate.load(str(local_folder), cache_dir=cache_dir)


def load_accuracy_metric(cache_dir: str | None = None):
    """`evaluate.load("accuracy")`, falling back to the local module folder when the Hub is unreachable."""
    return load_metric("accuracy", LOCAL_ACCURACY_METRIC, cache_dir)


def _image_classes(flag: str, folder: str) -> list[str]:
    """The class names of a local imagefolder tree (its sub-folders that hold images), or a `UsageError` naming
    `flag` for a folder that `datasets` would fail on with a message that names no argument."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    root = Path(folder)
    entries = sorted(root.iterdir())
    if any(entry.is_file() and entry.suffix.lower() in extensions for entry in entries):
        raise UsageError(f"`{flag}` {folder} holds images directly; expected one sub-folder of images per class.")

    def holds_images(class_dir: Path) -> bool:
        return any(name.lower().endswith(tuple(extensions)) for _, _, names in os.walk(class_dir) for name in names)

    classes = [entry.name for entry in entries if entry.is_dir() and holds_images(entry)]
    if not classes:
        raise UsageError(f"`{flag}` {folder} holds no images ({', '.join(sorted(extensions)[:6])}, ...) in "
                         "sub-folders; expected one sub-folder of images per class.")
    return classes


def check_image_folders(data_args: DataTrainingArguments) -> None:
    """Refuse local `--train_dir` / `--validation_dir` trees that cannot give a classification dataset: no images,
    images without class sub-folders, a single class, or validation classes that the training set lacks."""
    if data_args.dataset_name is not None:
        return
    local = {name: folder for name in ("train_dir", "validation_dir")
             if (folder := getattr(data_args, name)) is not None and "://" not in folder}
    classes = {name: _image_classes(f"--{name}", folder) for name, folder in local.items()}
    reference = "train_dir" if data_args.train_dir is not None else "validation_dir"
    if reference in classes and len(classes[reference]) < 2:
        raise UsageError(f"`--{reference}` {local[reference]} has a single class ({classes[reference][0]}); a "
                         "classifier needs at least two class sub-folders.")
    if "train_dir" in classes and "validation_dir" in classes:
        unknown = sorted(set(classes["validation_dir"]) - set(classes["train_dir"]))
        if unknown:
            raise UsageError(f"`--validation_dir` {local['validation_dir']} has classes that `--train_dir` lacks: "
                             f"{unknown[:10]}.")


class ImageRows(torch.utils.data.Dataset):
    """The rows of a map-style `datasets.Dataset`, where an image that cannot be decoded raises a `UsageError` that
    names the file and the argument it came from (PIL's own error names neither)."""

    errors = (OSError, SyntaxError, Image.DecompressionBombError)

    def __init__(self, rows, image_column: str, flag: str):
        self.rows, self.image_column, self.flag = rows, image_column, flag

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        try:
            return self.rows[index]
        except self.errors as error:
            raise self._decode_error([index], error) from None

    def __getitems__(self, indices: list) -> list:
        try:
            return self.rows.__getitems__(indices)
        except self.errors as error:
            raise self._decode_error(indices, error) from None

    def _decode_error(self, indices: list, error: Exception) -> UsageError:
        import datasets

        raw = self.rows.with_format(None).cast_column(self.image_column, datasets.Image(decode=False))
        for index in indices:
            try:
                self.rows[index]
            except self.errors as row_error:
                source = raw[int(index)][self.image_column].get("path") or f"row {index}"
                return UsageError(f"`{self.flag}`: cannot read the image {source}: {row_error}")
        return UsageError(f"`{self.flag}`: cannot read an image of rows {list(indices)[:8]}: {error}")


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


def is_scorer_parameter(name: str) -> bool:
    """Whether the parameter `name` belongs to the scorer (token and reshaper models) or to the evidence head."""
    return ".scorer." in f".{name}" or ".evidence_head." in f".{name}"  # any wrapper's prefix before the names


def split_scorer_group(groups: list[dict[str, Any]], scorer_lr: float) -> list[dict[str, Any]]:
    """`groups` (each with `params` and `param_names`) less the scorer's parameters (`is_scorer_parameter`), which
    move to one group of their own at `scorer_lr` without weight decay (`--scorer_learning_rate`)."""
    rest, scorer, scorer_names = [], [], []
    for group in groups:
        keep = [(n, p) for n, p in zip(group["param_names"], group["params"]) if not is_scorer_parameter(n)]
        scorer += [p for n, p in zip(group["param_names"], group["params"]) if is_scorer_parameter(n)]
        scorer_names += [n for n in group["param_names"] if is_scorer_parameter(n)]
        rest.append({**group, "params": [p for _, p in keep], "param_names": [n for n, _ in keep]})
    return [*rest, {"params": scorer, "param_names": scorer_names, "lr": scorer_lr, "weight_decay": 0.0}]


def has_evidence_module(model: Any) -> bool:
    """Whether `model` (unwrapped) learns where to look from the labels: the evidence head or the mil scorer head."""
    module = getattr(model, "evidence_module", None)
    return callable(module) and module() is not None


def _new_model_with_evidence_head(config: Any, new_model: bool) -> bool:
    """Whether the run trains a new token model with an evidence head (the mil scorer head, as the recommended
    scorer has, or `scorer_evidence_weight` > 0): the case the scorer's own training defaults are for."""
    return new_model and getattr(config, "model_type", None) == DartConfig.model_type and getattr(
        config, "scorer", None) == "learned" and (getattr(config, "scorer_head", None) == "mil" or getattr(
            config, "scorer_evidence_weight", 0.0) > 0)


# `--scorer_learning_rate`'s default for a new token model with an evidence head, as a multiple of `--learning_rate`:
# the mil head's rate in benchmarks/dart_vs_uniform.py (3e-3 beside 1e-3), and the saliency scorer's with the evidence
# head (benchmarks/README.md, "#23 third round")
SCORER_LEARNING_RATE_FACTORS = {"mil": 3.0, "saliency": 10.0}


def default_scorer_learning_rate(learning_rate: float, config: Any, new_model: bool) -> float:
    """`--scorer_learning_rate`'s default: `SCORER_LEARNING_RATE_FACTORS[scorer_head]` x `learning_rate` for a new
    token model with an evidence head (the recommended scorer), else `learning_rate`."""
    if not _new_model_with_evidence_head(config, new_model):
        return learning_rate
    return SCORER_LEARNING_RATE_FACTORS.get(config.scorer_head, 10.0) * learning_rate


# the evidence pre-training's length for the recommended scorer (benchmarks/README.md, "#23 fourth round")
DEFAULT_SCORER_PRETRAIN_STEPS = 300


def default_scorer_pretrain_steps(config: Any, new_model: bool) -> int:
    """`--scorer_pretrain_steps`'s default: `DEFAULT_SCORER_PRETRAIN_STEPS` for a new token model trained with an
    evidence head (the mil scorer head, or `scorer_evidence_weight` > 0), else 0."""
    return DEFAULT_SCORER_PRETRAIN_STEPS if _new_model_with_evidence_head(config, new_model) else 0


def pretrain_scorer(trainer: Trainer, steps: int) -> list[float]:
    """`--scorer_pretrain_steps`: the scorer and the evidence head of `trainer.model` train alone on the training
    batches (each process on its own), at `--scorer_learning_rate`; with several processes the first one's result is
    then copied to the others, so that all of them start the training from the same weights."""
    model = trainer.model
    losses = pretrain_scorer_on_evidence(model, trainer.get_train_dataloader(), steps,
                                         trainer.args.scorer_learning_rate)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        on_gpu = torch.distributed.get_backend() == "nccl"  # NCCL moves CUDA tensors only (a model held on the CPU
        for name, parameter in model.named_parameters():  # until FSDP wraps it goes through its GPU)
            if is_scorer_parameter(name) and parameter.requires_grad:
                buffer = parameter.data.cuda() if on_gpu and not parameter.is_cuda else parameter.data
                torch.distributed.broadcast(buffer, src=0)
                if buffer is not parameter.data:
                    parameter.data.copy_(buffer)
    return losses


class DartTrainer(Trainer):
    """A Trainer with DART model cards (written on `push_to_hub` and at the end of training) and the DeiT recipe's
    training-side pieces: mixup/cutmix soft-target loss, the keyed repeated-augmentation sampler, and DeiT's parameter
    groups with layer-wise learning-rate decay (`--layer_decay`).

    Losses are batch means, so the Trainer divides them over gradient accumulation steps itself
    (`model_accepts_loss_kwargs = False`: DART's forward takes `**kwargs` but no loss normaliser).
    """

    def __init__(self, *args, card_kwargs: dict[str, Any] | None = None, mixup: MixupCutmix | None = None,
                 repeated_augmentation: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_kwargs = dict(card_kwargs or {})
        self.model_accepts_loss_kwargs = False
        self.mixup = mixup if mixup is not None and mixup.active else None
        if self.mixup is not None:
            self.label_smoother = None  # the smoothing is inside the mixed soft targets
        self.repeated_augmentation = repeated_augmentation
        self._mix_step, self._mix_calls = -1, 0
        if getattr(self.args, "model_ema", False) and self.is_fsdp_enabled:
            raise UsageError("`--model_ema` is not supported with FSDP (the weights are sharded); use DDP or DeepSpeed "
                             "ZeRO-2.")

    @property
    def data_seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if isinstance(dataset, AugmentedImageDataset):
            return RepeatedAugmentationSampler(len(dataset), self.repeated_augmentation, self.args.world_size,
                                               self.args.process_index, seed=self.data_seed)
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self):
        dataloader = super().get_train_dataloader()
        if isinstance(self.train_dataset, AugmentedImageDataset):
            # the sampler is per process already: accelerate's batch sharding would split it again
            shard = getattr(dataloader, "batch_sampler", None)
            if shard is not None and hasattr(shard, "num_processes"):
                shard.num_processes, shard.process_index, shard.even_batches = 1, 0, False
        return dataloader

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation sees every sample: `--dataloader_drop_last` (DeiT drops the last partial training batch) would
        otherwise drop the last evaluation batch too, or all of a validation set smaller than one batch."""
        if not self.args.dataloader_drop_last:
            return super().get_eval_dataloader(eval_dataset)
        self.args.dataloader_drop_last = False
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.args.dataloader_drop_last = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # an evidence head (the mil scorer head, or `scorer_evidence_weight`) needs the labels in the model's call;
        # where the loss is computed here instead (label smoothing, mixup), its part (`evidence_loss`) is added to it
        evidence = model.training and has_evidence_module(self.accelerator.unwrap_model(model))
        if self.mixup is None or not model.training:
            if evidence and self.label_smoother is not None and "labels" in inputs:
                outputs = model(**inputs)
                loss = self.label_smoother(outputs, inputs["labels"]) + outputs.evidence_loss
                return (loss, outputs) if return_outputs else loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.state.global_step != self._mix_step:  # micro-batches of one optimizer step are numbered from 0
            self._mix_step, self._mix_calls = self.state.global_step, 0
        rng = np.random.default_rng([self.data_seed, self.args.process_index, self.state.global_step, self._mix_calls])
        self._mix_calls += 1
        pixel_values, targets = self.mixup(inputs["pixel_values"], inputs["labels"], rng)
        if evidence:  # the evidence head learns the class that dominates each mixed image
            outputs = model(pixel_values=pixel_values, labels=targets.argmax(-1))
        else:
            outputs = model(pixel_values=pixel_values)
        loss = soft_target_cross_entropy(outputs.logits, targets.to(outputs.logits.device))
        if evidence:
            loss = loss + outputs.evidence_loss
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        scorer_lr = self.args.scorer_learning_rate
        own_scorer_rate = scorer_lr is not None and scorer_lr != self.args.learning_rate
        if (self.args.layer_decay is None and not own_scorer_rate) or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.args.layer_decay is not None:
            # a dart_reshaper model has no DART blocks: its --layer_decay is 1.0 (check_model_options), all at one depth
            groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.args.layer_decay,
                                      num_layers=getattr(opt_model.config, "num_hidden_layers", 0))
        else:  # the Trainer's own rule: weight decay on the parameters `get_decay_parameter_names` lists
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [{"params": [p for n, p in named if (n in decay) == wanted],
                       "param_names": [n for n, p in named if (n in decay) == wanted],
                       "weight_decay": self.args.weight_decay if wanted else 0.0} for wanted in (True, False)]
        if own_scorer_rate:
            groups = split_scorer_group(groups, scorer_lr)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **optimizer_kwargs)
        return self.optimizer

    def create_model_card(self, model_name: str | None = None, finetuned_from: str | None = None, dataset=None,
                          metrics: dict[str, float] | None = None, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        card = dict(self.card_kwargs)
        base_model = finetuned_from or card.pop("base_model", None)
        card.pop("base_model", None)
        datasets_ = card.pop("datasets", None)
        if dataset is not None:
            datasets_ = [dataset] if isinstance(dataset, str) else list(dataset)
        source = card.pop("source", None) or (
            (f"Fine-tuned from `{base_model}`" if base_model else "Trained from a freshly initialised DART config")
            + " with `examples/run_image_classification.py`."
        )
        if metrics is not None:
            card["metrics"] = metrics
        title = card.pop("title", None)
        write_model_card(
            self.args.output_dir,
            self.model.config,
            title=model_name or title or Path(self.args.output_dir).name,
            source=source,
            task="image-classification",
            # a local folder is no Hub id: it stays in the text, not in the `base_model` metadata
            base_model=None if base_model is None or os.path.isdir(base_model) else base_model,
            datasets=datasets_,
            **card,
        )


def _unknown_preset(preset: str) -> str:
    return f"`--preset` {preset!r} is not a preset; choose from {', '.join(sorted(PRESETS))}."


def _requested_preset(args: list[str]) -> str | None:
    """The value of the last `--preset` in `args`, or None."""
    preset = None
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            preset = args[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    return preset


def build_argv(args: list[str]) -> list[str]:
    """Preset arguments first, then `--use_cpu true` when no GPU is present, then the user's own arguments. An unknown
    preset raises `SystemExit` here; `parse_args` refuses it first with a `UsageError` (exit code 2 from `cli`)."""
    argv: list[str] = []
    preset = _requested_preset(args)
    if preset is not None:
        if preset not in PRESETS:
            raise SystemExit(_unknown_preset(preset))
        argv += PRESETS[preset]
    if not torch.cuda.is_available():
        # Without `use_cpu=True`, every process started by `accelerate launch` / `torchrun` on a CPU-only machine
        # trains on its own (world size 1) and they all write the same folder.
        argv += ["--use_cpu", "true"]
    return argv + list(args)


def parse_args(args: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, DartTrainingArguments))
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        values = json.loads(Path(args[0]).read_text())
        if not torch.cuda.is_available():
            values.setdefault("use_cpu", True)
        return parser.parse_dict(values)
    preset = _requested_preset(args)
    if preset is not None and preset not in PRESETS:
        raise UsageError(_unknown_preset(preset))
    return parser.parse_args_into_dataclasses(args=build_argv(args))


# -------------------------------------------------------------------------------------------------------- main
def main(args: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(args)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"world_size: {training_args.world_size}, n_gpu: {training_args.n_gpu}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")

    checkpoint = training_args.resume_from_checkpoint
    if checkpoint in ("last", "latest", "true", "True"):
        checkpoint = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        logger.info(f"Resuming from {checkpoint}" if checkpoint else "No checkpoint to resume from: starting afresh.")
    elif checkpoint is not None and not os.path.isdir(checkpoint):
        raise UsageError(f"`--resume_from_checkpoint` {checkpoint} is not a checkpoint folder (or `last`).")
    # A resume from a checkpoint inside --output_dir continues that run in place; any other run is written into a
    # temporary sibling folder that replaces or joins --output_dir only when the run succeeds.
    output_dir = Path(training_args.output_dir).expanduser().resolve()
    in_place = checkpoint is not None and output_dir in Path(checkpoint).resolve().parents
    inputs = {"--train_dir": data_args.train_dir, "--validation_dir": data_args.validation_dir,
              "--dataset_name": data_args.dataset_name, "--model_name_or_path": model_args.model_name_or_path,
              "--config_name": model_args.config_name, "--image_processor_name": model_args.image_processor_name,
              "--scorer_trunk_weights": model_args.scorer_trunk_weights}
    # a config file or folder
    if model_args.backbone_config and existing_local_path(model_args.backbone_config.strip()):
        inputs["--backbone_config"] = model_args.backbone_config
    if not in_place:
        inputs["--resume_from_checkpoint"] = checkpoint
    check_output_dir(output_dir, overwrite=training_args.overwrite_output_dir or in_place, inputs=inputs,
                     overwrite_flag="--overwrite_output_dir")
    check_image_folders(data_args)
    for flag in ("model_name_or_path", "config_name", "image_processor_name"):
        check_model_source(f"--{flag}", getattr(model_args, flag))
    overrides, flags = collect_config_overrides(model_args)
    if model_args.model_name_or_path and model_args.backbone_config is not None:
        raise UsageError("`--backbone_config` builds a new dart_reshaper model; the model of `--model_name_or_path` "
                         "keeps its own classifier (set its fields with `--config_overrides backbone_config.FIELD=v`).")
    if not model_args.model_name_or_path:  # a new config: its fields and values are checked before the data are read
        config = build_config_from_scratch(model_args.config_name, overrides, flags, model_args.model_type,
                                           model_args.backbone_config, model_args.scorer_trunk_weights)
        check_model_options(config, model_args, training_args)
    if training_args.push_to_hub and training_args.hub_model_id is None:
        training_args.hub_model_id = output_dir.name  # the Trainer would name the repo after the temporary folder

    staged = StagedOutput(output_dir, main_process=training_args.should_save, in_place=in_place,
                          keep_on_failure=lambda folder: any(folder.glob("checkpoint-*")))
    with staged as folder:
        training_args.output_dir = str(folder)
        metrics = train_and_evaluate(model_args, data_args, training_args, checkpoint, output_dir)
    training_args.output_dir = str(output_dir)
    return metrics


def train_and_evaluate(model_args, data_args, training_args, checkpoint: str | None, output_dir: Path) -> dict:
    """Load the data and the model, train and evaluate, and write everything into `training_args.output_dir`
    (`output_dir` names the final folder in the model card and the Hub repo). Returns the metrics."""
    if training_args.scale_lr_by_batch:
        base_lr = training_args.learning_rate
        training_args.learning_rate = scaled_learning_rate(
            base_lr, training_args.per_device_train_batch_size, training_args.world_size,
            training_args.gradient_accumulation_steps, training_args.base_batch_size,
        )
        logger.warning(f"Learning rate {base_lr:g} scaled by total batch {training_args.per_device_train_batch_size} x "
                       f"{training_args.world_size} x {training_args.gradient_accumulation_steps} / "
                       f"{training_args.base_batch_size}: {training_args.learning_rate:g}")

    set_seed(training_args.seed)

    # ------------------------------------------------------------------------------------------------ data
    streaming = data_args.streaming
    if streaming and training_args.do_train and training_args.max_steps <= 0:
        raise UsageError("`--streaming` datasets have no length: give the number of training steps with --max_steps.")
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
            streaming=streaming,
        )
    else:
        data_files = {}
        if data_args.train_dir is not None:
            data_files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir,
                               streaming=streaming)

    reference_split = "train" if "train" in dataset else next(iter(dataset))
    features = dataset[reference_split].features
    columns = list(features) if features is not None else dataset[reference_split].column_names
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in (columns or []):
            raise UsageError(
                f"Column {column!r} not found in the dataset (columns: {columns}); "
                "set --image_column_name / --label_column_name."
            )

    if "validation" not in dataset and "train" in dataset and training_args.do_eval:
        if streaming:
            raise UsageError("--streaming with --do_eval needs a validation split (--validation_dir, or a dataset "
                             "with a `validation` split): a stream cannot be split.")
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]

    label_feature = features[data_args.label_column_name]
    if hasattr(label_feature, "names"):  # a ClassLabel column holds ids already
        labels = list(label_feature.names)
    elif streaming:
        raise UsageError(f"--streaming needs a ClassLabel column {data_args.label_column_name!r} (its names give the "
                         "labels without reading the whole stream); got " + type(label_feature).__name__)
    else:  # plain values (strings, ints): number them in sorted order
        labels = sorted({str(v) for v in dataset[reference_split][data_args.label_column_name]})
    label2id = {label: i for i, label in enumerate(labels)}
    has_class_label = hasattr(label_feature, "names")

    def label_id(value) -> int:
        return int(value) if has_class_label else label2id[str(value)]

    def label_ids(values):
        return [label_id(v) for v in values]

    id2label = {i: label for i, label in enumerate(labels)}
    label_kwargs = {"num_labels": len(labels), "label2id": label2id, "id2label": id2label}

    # ------------------------------------------------------------------------------------- config and model
    overrides, flags = collect_config_overrides(model_args)

    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
              "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path:
        config_flag = "--config_name" if model_args.config_name else "--model_name_or_path"
        config = load_from_hub(config_flag, AutoConfig.from_pretrained,
                               model_args.config_name or model_args.model_name_or_path,
                               finetuning_task="image-classification", **label_kwargs, **common)
        model_type = getattr(config, "model_type", None)
        if model_type not in MODEL_CLASSES:
            raise UsageError(f"`{config_flag}` {model_args.config_name or model_args.model_name_or_path} holds a "
                             f"{model_type!r} model, not a DART one ({' or '.join(MODEL_CLASSES)}); wrap a ViT, DeiT "
                             "or Vim with conversion/convert_vit_to_dart.py first.")
        if model_args.model_type is not None and model_args.model_type != model_type:
            raise UsageError(f"`--model_type {model_args.model_type}` differs from the model type {model_type!r} of "
                             f"`{config_flag}`.")
        if model_type == RESHAPER:
            require_image_classifier(config.backbone_config, f"`{config_flag}`")
        overrides, flags = overrides_for_model_type(model_type, overrides, flags)
        apply_config_overrides(config, overrides, flags)
        check_model_options(config, model_args, training_args)
        model = load_from_hub(
            "--model_name_or_path", AutoModelForImageClassification.from_pretrained, model_args.model_name_or_path,
            config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **common,
        )
    else:
        config = build_config_from_scratch(model_args.config_name, overrides, flags, model_args.model_type,
                                           model_args.backbone_config, model_args.scorer_trunk_weights,
                                           **label_kwargs)
        overrides, flags = overrides_for_model_type(config.model_type, overrides, flags)
        config.finetuning_task = "image-classification"
        model = MODEL_CLASSES[config.model_type][1](config)
        if config.scorer == "learned" and config.freeze_scorer_trunk and model_args.scorer_trunk_weights is None:
            logger.warning(
                "Training from scratch with a frozen scorer trunk and no --scorer_trunk_weights: its weights are "
                "random and stay so. Pass `--scorer_trunk_weights efficientnet_lite0` (with "
                "`scorer_trunk=efficientnet_lite0`, as the quickstart preset does), `--freeze_scorer_trunk false`, "
                "or start from a converted DART folder (`--model_name_or_path`)."
            )
    if model_args.scorer_trunk_weights is not None:
        try:
            skipped = load_scorer_trunk_weights(model, model_args.scorer_trunk_weights)
        except (ValueError, KeyError, OSError) as error:
            raise UsageError(f"`--scorer_trunk_weights` {model_args.scorer_trunk_weights}: {error}") from error
        kept = next(len(module.features) for module in model.modules() if hasattr(module, "trunk_name"))
        logger.info(f"Scorer trunk ({model.config.scorer_trunk}) loaded from {model_args.scorer_trunk_weights}; "
                    f"{len(skipped)} tensors of deeper entries left out (the trunk keeps {kept} entries).")
    if "freeze_scorer_trunk" in overrides:
        set_scorer_trunk_frozen(model, bool(overrides["freeze_scorer_trunk"]))
    if "drop_path_rate" in overrides:  # token DART's blocks took their rates at construction
        set_drop_path_rate(model, float(overrides["drop_path_rate"]))

    logger.info(describe_model(model))

    # ------------------------------------------------------------------------------------- image processing
    processor_source = model_args.image_processor_name or model_args.model_name_or_path
    if processor_source:
        image_processor = load_from_hub("--image_processor_name" if model_args.image_processor_name else
                                        "--model_name_or_path", AutoImageProcessor.from_pretrained, processor_source,
                                        **common)
        if model_args.image_size is not None:
            resize_processor(image_processor, model_args.image_size)
    else:
        size = model.config.image_size
        trunk = TRUNKS[model.config.scorer_trunk]  # the normalisation the trunk's pretrained weights expect
        image_processor = DartImageProcessor(
            size={"shortest_edge": round(size / model_args.crop_pct)},
            crop_size={"height": size, "width": size},
            image_mean=list(trunk.input_mean), image_std=list(trunk.input_std),
        )
    mean = image_processor.image_mean if image_processor.do_normalize else (0.0, 0.0, 0.0)
    augmentation = TrainAugmentation(
        image_processor, scale=(data_args.min_crop_scale, 1.0), hflip=data_args.hflip_probability,
        rand_augment=RandAugment(data_args.rand_augment, fill=[min(255, round(255 * m)) for m in mean])
        if data_args.rand_augment else None,
        erasing=RandomErasing(data_args.random_erasing, data_args.random_erasing_mode, data_args.random_erasing_count)
        if data_args.random_erasing > 0 else None,
    )
    image_column, label_column = data_args.image_column_name, data_args.label_column_name

    def eval_transforms(batch):
        pixel_values = image_processor([image.convert("RGB") for image in batch[image_column]], return_tensors="pt")
        return {"pixel_values": list(pixel_values["pixel_values"]), "labels": label_ids(batch[label_column])}

    # streams draw from one generator per DataLoader worker (a stream has no index to key the draws on)
    stream_generators = PerWorkerGenerator(training_args.seed + training_args.process_index)

    def stream_train_transforms(batch):
        rng = stream_generators()
        pixel_values = [augmentation(image.convert("RGB"), rng) for image in batch[image_column]]
        return {"pixel_values": pixel_values, "labels": label_ids(batch[label_column])}

    def prepare_split(split: str, max_samples: int | None, missing: str, train: bool):
        if split not in dataset:
            raise UsageError(missing)
        subset = dataset[split]
        if streaming:
            if train:
                subset = subset.shuffle(seed=training_args.seed, buffer_size=data_args.shuffle_buffer_size)
            if max_samples is not None:
                subset = subset.take(max_samples)
            transform = stream_train_transforms if train else eval_transforms
            return subset.map(transform, batched=True, remove_columns=list(features))
        if max_samples is not None:
            subset = subset.shuffle(seed=training_args.seed).select(range(min(max_samples, len(subset))))
        flag = "--dataset_name" if data_args.dataset_name is not None else (
            "--validation_dir" if split == "validation" and data_args.validation_dir is not None else "--train_dir")
        if train:  # each sample augmented from its key (index, epoch, copy): resumed runs draw what they would have
            return AugmentedImageDataset(ImageRows(subset, image_column, flag), augmentation, image_column,
                                         label_column, label_id, seed=training_args.data_seed
                                         if training_args.data_seed is not None else training_args.seed)
        subset.set_transform(eval_transforms)
        return ImageRows(subset, image_column, flag)

    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = prepare_split(
            "train", data_args.max_train_samples,
            "--do_train needs a training split (--train_dir or a dataset with a `train` split).", train=True,
        )
    if training_args.do_eval:
        eval_dataset = prepare_split(
            "validation", data_args.max_eval_samples,
            "--do_eval needs a validation split (--validation_dir or --train_val_split).", train=False,
        )

    # ------------------------------------------------------------------------------------------------ metric
    metric = load_accuracy_metric(model_args.cache_dir)

    def compute_metrics(eval_prediction):
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):  # logits first (folders whose config predates keys_to_ignore_at_inference)
            predictions = predictions[0]
        return metric.compute(predictions=np.argmax(predictions, axis=1), references=eval_prediction.label_ids)

    # ------------------------------------------------------------------------------------------------ trainer
    if training_args.remove_unused_columns:
        # The raw image column is turned into `pixel_values` on the fly by `set_transform`: the Trainer must keep it.
        training_args = dataclasses.replace(training_args, remove_unused_columns=False)
    dataset_label = data_args.dataset_name or (
        "sparse_fashion (bundled Fashion-MNIST on textured backgrounds)"
        if data_args.train_dir and Path(data_args.train_dir).resolve().parent == BUNDLED_DATA.resolve()
        else f"imagefolder {data_args.train_dir or data_args.validation_dir}"
    )
    card_kwargs = {
        "title": output_dir.name,
        "base_model": model_args.model_name_or_path,
        "datasets": [data_args.dataset_name] if data_args.dataset_name else None,
        "source": (
            (f"Fine-tuned from `{model_args.model_name_or_path}`" if model_args.model_name_or_path
             else "Trained from a freshly initialised DART "
             + ("reshaper config" if model.config.model_type == RESHAPER else "config"))
            + f" with `examples/run_image_classification.py` on {dataset_label}."
        ),
    }
    if training_args.scorer_learning_rate is None:
        training_args.scorer_learning_rate = default_scorer_learning_rate(
            training_args.learning_rate, model.config, new_model=not model_args.model_name_or_path)
    pretrain_steps = training_args.scorer_pretrain_steps
    if pretrain_steps is None:
        pretrain_steps = default_scorer_pretrain_steps(model.config, new_model=not model_args.model_name_or_path)
    elif pretrain_steps and not has_evidence_module(model):
        raise UsageError("`--scorer_pretrain_steps` trains the evidence head (and the scorer towards its attention): "
                         "the model needs `scorer_evidence_weight` > 0 or `scorer_head='mil'` (a token model with a "
                         f"learned scorer), got scorer_evidence_weight="
                         f"{getattr(model.config, 'scorer_evidence_weight', None)!r}, "
                         f"scorer_head={getattr(model.config, 'scorer_head', None)!r}.")
    if pretrain_steps and not training_args.scorer_learning_rate > 0:
        raise UsageError(f"`--scorer_pretrain_steps` {pretrain_steps} trains the scorer at `--scorer_learning_rate`, "
                         f"which must then be > 0, got {training_args.scorer_learning_rate}.")
    mixup = MixupCutmix(len(labels), data_args.mixup, data_args.cutmix, data_args.mixup_prob,
                        data_args.mixup_switch_prob, training_args.label_smoothing_factor)
    ema = ModelEmaCallback(training_args.model_ema_decay, resume_from=checkpoint) if training_args.model_ema else None
    with fsdp_on_cpu():
        trainer = DartTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics,
            processing_class=image_processor,
            data_collator=collate_fn,
            card_kwargs=card_kwargs,
            mixup=mixup,
            repeated_augmentation=data_args.repeated_augmentation,
            callbacks=[ema] if ema is not None else None,
        )

    all_metrics: dict[str, float] = {"world_size": training_args.world_size,
                                     "learning_rate": training_args.learning_rate}
    if training_args.do_train:
        pretrain_losses = pretrain_scorer(trainer, pretrain_steps) if pretrain_steps and checkpoint is None else []
        if pretrain_losses:
            logger.info(f"scorer pre-training: {len(pretrain_losses)} steps, evidence loss {pretrain_losses[0]:.3f} "
                        f"-> {pretrain_losses[-1]:.3f}")
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # model.safetensors + config.json + preprocessor_config.json (+ modeling code)
        train_metrics = dict(train_result.metrics)
        if hasattr(train_dataset, "__len__"):
            train_metrics["train_samples"] = len(train_dataset)
        train_metrics["world_size"] = training_args.world_size
        train_metrics["learning_rate"] = training_args.learning_rate
        if pretrain_losses:  # --scorer_pretrain_steps: the evidence loss at its first and last step
            train_metrics["scorer_pretrain_steps"] = len(pretrain_losses)
            train_metrics["scorer_pretrain_loss_first"] = pretrain_losses[0]
            train_metrics["scorer_pretrain_loss_last"] = pretrain_losses[-1]
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        all_metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()  # DartConfig.keys_to_ignore_at_inference: only logits are gathered
        if hasattr(eval_dataset, "__len__"):
            eval_metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        all_metrics.update(eval_metrics)
    if ema is not None and ema.state is not None:
        # the average as its own model folder, evaluated like the model (DeiT reports both)
        ema_dir = os.path.join(training_args.output_dir, "ema")
        kept = ema.swap_into(trainer.model)
        try:
            trainer.save_model(ema_dir)
            if trainer.is_world_process_zero():
                write_model_card(ema_dir, trainer.model.config, title=f"{output_dir.name} (EMA)",
                                 source=f"Exponential moving average (decay {training_args.model_ema_decay}) of the "
                                 "weights of the model trained in the folder above, with "
                                 "`examples/run_image_classification.py --model_ema`.", task="image-classification")
            if training_args.do_eval:
                ema_metrics = trainer.evaluate(metric_key_prefix="eval_ema")
                trainer.log_metrics("eval_ema", ema_metrics)
                trainer.save_metrics("eval_ema", ema_metrics)
                all_metrics.update(ema_metrics)
        finally:
            ema.restore(trainer.model, kept)
    if trainer.is_world_process_zero():
        # Record the world size in all_results.json even without training (`save_metrics` merges into that file).
        all_results = Path(training_args.output_dir) / "all_results.json"
        merged = json.loads(all_results.read_text()) if all_results.is_file() else {}
        merged["world_size"] = training_args.world_size
        merged["distributed_type"] = getattr(trainer.accelerator.distributed_type, "value", "NO")  # e.g. FSDP
        all_results.parent.mkdir(parents=True, exist_ok=True)
        all_results.write_text(json.dumps(merged, indent=4, sort_keys=True) + "\n")

    card_metrics = {
        key: value for key, value in all_metrics.items()
        if key in ("eval_accuracy", "eval_loss", "train_loss", "world_size", "eval_ema_accuracy") and value is not None
    }
    kwargs = {"finetuned_from": model_args.model_name_or_path, "metrics": card_metrics}
    if data_args.dataset_name is not None:
        kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)

    if trainer.is_world_process_zero() and "eval_accuracy" in all_metrics:
        print(f"eval_accuracy = {all_metrics['eval_accuracy']:.4f} ({len(labels)} classes, chance "
              f"{1 / len(labels):.2f}); model saved to {output_dir}")
    return all_metrics


def _mp_fn(index):  # for xla_spawn (TPUs)
    main()


def _close_process_group():
    """Tear the process group down before exit (torch asks for it): left to interpreter exit, a launch on CPU
    processes aborted now and then after finishing ("terminate called without an active exception", exit -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cli(args: list[str] | None = None) -> int:
    """The command line: `main(args)`, with bad arguments or data reported on one line and exit code 2."""
    try:
        main(args)
    except UsageError as error:
        return report_usage_error(error)
    _close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
