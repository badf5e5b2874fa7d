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

Fine-tune a saved DART folder on your own data with a new head:

    python examples/run_image_classification.py --model_name_or_path path/to/dart-folder \
        --train_dir data/train --validation_dir data/validation --ignore_mismatched_sizes true \
        --output_dir outputs/my-dart --do_train --do_eval --num_train_epochs 5 --learning_rate 1e-4
"""

from __future__ import annotations

import dataclasses
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

from modeling_dart import DartConfig, DartForImageClassification, DartImageProcessor
from modeling_dart.image_processing_dart import DartTrainTransform
from modeling_dart.model_card import write_model_card

logger = logging.getLogger(__name__)

LOCAL_ACCURACY_METRIC = EXAMPLES_DIR / "metrics" / "accuracy"
BUNDLED_DATA = EXAMPLES_DIR / "data" / "sparse_fashion"

# ----------------------------------------------------------------------------------------------------- presets
# A preset is a list of command-line arguments put BEFORE the user's own, so any explicit argument overrides it.
QUICKSTART_CONFIG = {
    "image_size": 96,
    "patch_size": 8,
    "score_grid_size": 8,
    "num_tokens": 64,
    "hidden_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "scorer_trunk": "mobilenet_v3_small",
    "scorer_head": "v1",
    # 96-pixel images: the original depth (stride 32) would give a 3x3 score map; 4 entries (stride 8) give 12x12
    "scorer_trunk_depth": 4,
    "freeze_scorer_trunk": False,
}

PRESETS: dict[str, list[str]] = {
    "quickstart": [
        "--train_dir", str(BUNDLED_DATA / "train"),
        "--validation_dir", str(BUNDLED_DATA / "validation"),
        "--config_overrides", ",".join(f"{k}={v}" for k, v in QUICKSTART_CONFIG.items()),
        "--crop_pct", "1.0",
        "--min_crop_scale", "0.7",
        "--output_dir", "outputs/quickstart",
        "--do_train", "true",
        "--do_eval", "true",
        "--num_train_epochs", "20",
        "--learning_rate", "5e-4",
        "--weight_decay", "0.05",
        "--warmup_steps", "0.1",
        "--lr_scheduler_type", "cosine",
        "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "100",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "75",
        "--ddp_find_unused_parameters", "false",
        "--seed", "0",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
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

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ValueError(
                "Give a dataset: `--dataset_name` (Hub), or `--train_dir` / `--validation_dir` (local imagefolder), "
                "or `--preset quickstart` for the bundled data."
            )
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"`--min_crop_scale` must be in (0, 1], got {self.min_crop_scale}.")


@dataclass
class ModelArguments:
    """Which model/config/image processor to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved DART folder (or Hub id) to fine-tune. Leave unset to train from a fresh config."},
    )
    config_name: str | None = field(
        default=None, metadata={"help": "A config folder or `config.json` path, when it differs from the model's."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override config values, e.g. `hidden_size=128,num_hidden_layers=4,scorer=uniform`. From "
            "scratch any field; on a pretrained model only fields that leave the weights' shapes alone."
        },
    )
    num_tokens: int | None = field(default=None, metadata={"help": "Number of adaptive tokens (config `num_tokens`)."})
    freeze_scorer_trunk: bool | None = field(
        default=None,
        metadata={"help": "Freeze the MobileNetV3 trunk of the scorer (config `freeze_scorer_trunk`); unset keeps the config's."},
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


# ----------------------------------------------------------------------------------------------------- helpers
def parse_override_value(text: str) -> Any:
    """`"true"` -> True, `"none"` -> None, `"12"` -> 12, `"1e-3"` -> 0.001, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_overrides(spec: str | None) -> dict[str, Any]:
    """`"k=v,k=v"` -> dict with typed values."""
    overrides: dict[str, Any] = {}
    if not spec:
        return overrides
    for item in spec.split(","):
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


def build_config_from_scratch(config_name: str | None, overrides: dict[str, Any], **label_kwargs) -> DartConfig:
    base: dict[str, Any] = {}
    if config_name:
        path = Path(config_name)
        base = json.loads((path / "config.json" if path.is_dir() else path).read_text()) if path.exists() else (
            AutoConfig.from_pretrained(config_name).to_dict()
        )
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "id2label", "label2id"):
            base.pop(key, None)
    for derived, sources in _DERIVED.items():
        if derived not in overrides and any(source in overrides for source in sources):
            base.pop(derived, None)
    return DartConfig(**{**base, **overrides, **label_kwargs})


def set_scorer_trunk_frozen(model: torch.nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the scorer's MobileNetV3 trunk of a built model (and record it in the config)."""
    from modeling_dart.embeddings_dart import DartScorer

    for module in model.modules():
        if isinstance(module, DartScorer):
            module.freeze_trunk = frozen
            module.features.requires_grad_(not frozen)
            module.train(module.training)  # a frozen trunk keeps its BatchNorm in eval mode
    model.config.freeze_scorer_trunk = frozen


def load_accuracy_metric(cache_dir: str | None = None):
    """`evaluate.load("accuracy")`, falling back to the local module folder when the Hub is unreachable."""
    import evaluate

    offline = any(
        os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
        for name in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline:
        try:
            return evaluate.load("accuracy", cache_dir=cache_dir)
        except Exception as err:  # noqa: BLE001  (no network, Hub down, ...: any failure means the fallback)
            logger.warning(f"evaluate.load('accuracy') failed ({type(err).__name__}); using {LOCAL_ACCURACY_METRIC}.")
    return evaluate.load(str(LOCAL_ACCURACY_METRIC), cache_dir=cache_dir)


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([torch.as_tensor(example["pixel_values"]) for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


class DartTrainer(Trainer):
    """A Trainer whose model cards (written on `push_to_hub` and at the end of training) are DART model cards."""

    def __init__(self, *args, card_kwargs: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_kwargs = dict(card_kwargs or {})

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


def build_argv(args: list[str]) -> list[str]:
    """Preset arguments first, then `--use_cpu true` when no GPU is present, then the user's own arguments."""
    argv: list[str] = []
    preset = None
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            preset = args[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
    if preset is not None:
        if preset not in PRESETS:
            raise SystemExit(f"Unknown --preset {preset!r}; choose from {sorted(PRESETS)}.")
        argv += PRESETS[preset]
    if not torch.cuda.is_available():
        # Without `use_cpu=True`, every process started by `accelerate launch` / `torchrun` on a CPU-only machine
        # trains on its own (world size 1) and they all write the same folder.
        argv += ["--use_cpu", "true"]
    return argv + list(args)


def parse_args(args: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    args = sys.argv[1:] if args is None else list(args)
    if len(args) == 1 and args[0].endswith(".json"):
        values = json.loads(Path(args[0]).read_text())
        if not torch.cuda.is_available():
            values.setdefault("use_cpu", True)
        return parser.parse_dict(values)
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

    set_seed(training_args.seed)

    # ------------------------------------------------------------------------------------------------ data
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    else:
        data_files = {}
        if data_args.train_dir is not None:
            data_files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)

    reference_split = "train" if "train" in dataset else next(iter(dataset))
    for column in (data_args.image_column_name, data_args.label_column_name):
        if column not in dataset[reference_split].column_names:
            raise ValueError(
                f"Column {column!r} not found in the dataset (columns: {dataset[reference_split].column_names}); "
                "set --image_column_name / --label_column_name."
            )

    if "validation" not in dataset and "train" in dataset and training_args.do_eval:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=training_args.seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]

    label_feature = dataset[reference_split].features[data_args.label_column_name]
    if hasattr(label_feature, "names"):  # a ClassLabel column holds ids already
        labels = list(label_feature.names)
    else:  # plain values (strings, ints): number them in sorted order
        labels = sorted({str(v) for v in dataset[reference_split][data_args.label_column_name]})
    label2id = {label: i for i, label in enumerate(labels)}
    has_class_label = hasattr(label_feature, "names")

    def label_ids(values):
        return list(values) if has_class_label else [label2id[str(v)] for v in values]

    id2label = {i: label for i, label in enumerate(labels)}
    label_kwargs = {"num_labels": len(labels), "label2id": label2id, "id2label": id2label}

    # ------------------------------------------------------------------------------------- config and model
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.num_tokens is not None:
        overrides["num_tokens"] = model_args.num_tokens
    if model_args.freeze_scorer_trunk is not None:
        overrides["freeze_scorer_trunk"] = model_args.freeze_scorer_trunk

    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
              "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(
            model_args.config_name or model_args.model_name_or_path, finetuning_task="image-classification",
            **label_kwargs, **common,
        )
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"`--config_overrides`: {type(config).__name__} has no field {key!r}.")
            setattr(config, key, value)
        if hasattr(config, "_validate_dart"):
            config._validate_dart()
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **common,
        )
    else:
        config = build_config_from_scratch(model_args.config_name, overrides, **label_kwargs)
        config.finetuning_task = "image-classification"
        model = DartForImageClassification(config)
        if config.scorer == "learned" and config.freeze_scorer_trunk:
            logger.warning(
                "Training from scratch with a frozen scorer trunk: its weights are random and stay so, and its "
                "features shrink towards zero through the untrained BatchNorms, so the score map carries little "
                "but rounding noise. Pass `--freeze_scorer_trunk false` (as the quickstart preset does) or start "
                "from a converted DART folder (`--model_name_or_path`)."
            )
    if "freeze_scorer_trunk" in overrides:
        set_scorer_trunk_frozen(model, bool(overrides["freeze_scorer_trunk"]))

    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        f"DART model: {num_params / 1e6:.2f}M parameters ({num_trainable / 1e6:.2f}M trainable), "
        f"{model.config.num_tokens} tokens, scorer={model.config.scorer}, "
        f"freeze_scorer_trunk={model.config.freeze_scorer_trunk}"
    )

    # ------------------------------------------------------------------------------------- image processing
    processor_source = model_args.image_processor_name or model_args.model_name_or_path
    if processor_source:
        image_processor = AutoImageProcessor.from_pretrained(processor_source, **common)
    else:
        size = model.config.image_size
        image_processor = DartImageProcessor(
            size={"shortest_edge": round(size / model_args.crop_pct)},
            crop_size={"height": size, "width": size},
        )
    train_transform = DartTrainTransform(  # seeded: the same command gives the same run
        image_processor, scale=(data_args.min_crop_scale, 1.0), hflip=data_args.hflip_probability,
        seed=training_args.seed + training_args.process_index,
    )
    image_column, label_column = data_args.image_column_name, data_args.label_column_name

    def train_transforms(batch):
        pixel_values = train_transform([image.convert("RGB") for image in batch[image_column]], return_tensors="pt")
        return {"pixel_values": list(pixel_values["pixel_values"]), "labels": label_ids(batch[label_column])}

    def eval_transforms(batch):
        pixel_values = image_processor([image.convert("RGB") for image in batch[image_column]], return_tensors="pt")
        return {"pixel_values": list(pixel_values["pixel_values"]), "labels": label_ids(batch[label_column])}

    def prepare_split(split: str, max_samples: int | None, transform, missing: str):
        if split not in dataset:
            raise ValueError(missing)
        subset = dataset[split]
        if max_samples is not None:
            subset = subset.shuffle(seed=training_args.seed).select(range(min(max_samples, len(subset))))
        subset.set_transform(transform)
        return subset

    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = prepare_split(
            "train", data_args.max_train_samples, train_transforms,
            "--do_train needs a training split (--train_dir or a dataset with a `train` split).",
        )
    if training_args.do_eval:
        eval_dataset = prepare_split(
            "validation", data_args.max_eval_samples, eval_transforms,
            "--do_eval needs a validation split (--validation_dir or --train_val_split).",
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
        "base_model": model_args.model_name_or_path,
        "datasets": [data_args.dataset_name] if data_args.dataset_name else None,
        "source": (
            (f"Fine-tuned from `{model_args.model_name_or_path}`" if model_args.model_name_or_path
             else "Trained from a freshly initialised DART config")
            + f" with `examples/run_image_classification.py` on {dataset_label}."
        ),
    }
    trainer = DartTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        processing_class=image_processor,
        data_collator=collate_fn,
        card_kwargs=card_kwargs,
    )

    all_metrics: dict[str, float] = {"world_size": training_args.world_size}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # model.safetensors + config.json + preprocessor_config.json (+ modeling code)
        train_metrics = dict(train_result.metrics)
        train_metrics["train_samples"] = len(train_dataset)
        train_metrics["world_size"] = training_args.world_size
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        all_metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()  # DartConfig.keys_to_ignore_at_inference: only logits are gathered
        eval_metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        all_metrics.update(eval_metrics)
    if trainer.is_world_process_zero():
        # Record the world size in all_results.json even without training (`save_metrics` merges into that file).
        all_results = Path(training_args.output_dir) / "all_results.json"
        merged = json.loads(all_results.read_text()) if all_results.is_file() else {}
        merged["world_size"] = training_args.world_size
        all_results.parent.mkdir(parents=True, exist_ok=True)
        all_results.write_text(json.dumps(merged, indent=4, sort_keys=True) + "\n")

    card_metrics = {
        key: value for key, value in all_metrics.items()
        if key in ("eval_accuracy", "eval_loss", "train_loss", "world_size") and value is not None
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
              f"{1 / len(labels):.2f}); model saved to {training_args.output_dir}")
    return all_metrics


def _mp_fn(index):  # for xla_spawn (TPUs)
    main()


if __name__ == "__main__":
    main()
