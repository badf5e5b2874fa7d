#!/usr/bin/env python
"""Train DART's image reshaper in front of a semantic segmentation model with the 🤗 Trainer.

`DartReshaperForSemanticSegmentation`: the reshaper warps each image (more pixels for the regions its scorer finds
important), a segmentation model (UperNet with a ConvNeXt, Swin or RMT backbone, Segformer, ...) segments the warped
image, and its logits are warped back to the input grid; the label maps are warped as the images for the loss, so the
scorer learns from the segmentation loss.

Data: local image/mask pairs (`--train_dir` / `--validation_dir`, each holding `images/` and `masks/` with the same
file stems; the masks are single-channel PNGs of class ids, 255 for unlabelled pixels; class names from
`--id2label`, by default an `id2label.json` in the split folder or the folder above), or a Hub dataset
(`--dataset_name`) with `image` and `annotation` columns, ADE20K's layout (`scene_parse_150`: `--reduce_labels true`
turns its 0 "other" into 255 and shifts the classes down by one; `--id2label` gives the names). Preprocessing: the
DART image processor resizes images (bilinear) and masks (nearest) to `--image_size`; training adds a horizontal flip.
The metric is `evaluate`'s `mean_iou` (the local copy in `examples/metrics/mean_iou` when the Hub is unreachable), on
the input grid.

On the bundled canvases (Fashion-MNIST articles, `examples/data/sparse_fashion_seg`), a tiny UperNet + ConvNeXt
behind a reshaper scored by the packaged ImageNet EfficientNet-Lite0 trunk:

    python examples/run_semantic_segmentation.py \
        --train_dir examples/data/sparse_fashion_seg/train --validation_dir examples/data/sparse_fashion_seg/validation \
        --backbone_config '{"model_type": "convnext", "num_stages": 2, "hidden_sizes": [16, 32], "depths": [1, 1]}' \
        --config_overrides image_size=128,patch_size=8,score_grid_size=16,backbone_config.hidden_size=32,\
backbone_config.auxiliary_channels=16 \
        --scorer_trunk_weights efficientnet_lite0 --output_dir outputs/seg --do_train --do_eval --max_steps 200

`--scorer_trunk_weights efficientnet_lite0` gives a new model the recommended scorer (that trunk, frozen, with the
`saliency` head) unless `--config_overrides` chooses a trunk or head.

`--backbone_config` is either the segmentation model's configuration (a JSON object, config.json file or folder with
its `model_type`, e.g. `upernet` with its own `backbone_config`, or `segformer`), or a backbone's (an RMT preset
such as `rmt_t3`, or a `convnext` / `swin` / `rmt` JSON object or file), which is put into a UperNet that reads all
its stages. `--config_overrides` sets the reshaper's fields and, as `backbone_config.FIELD=value`, the segmentation
model's (UperNet: `hidden_size`, `auxiliary_channels`, `pool_scales`, `loss_ignore_index`, ...).

Fine-tune a saved `dart_reshaper` segmentation folder (new classes: `--ignore_mismatched_sizes true`):

    python examples/run_semantic_segmentation.py --model_name_or_path path/to/folder --train_dir ... \
        --validation_dir ... --output_dir outputs/seg-ft --do_train --do_eval

Two processes on CPU (gloo DDP; the script sets `use_cpu=True` when no GPU is present):

    accelerate launch --multi_gpu --num_processes 2 examples/run_semantic_segmentation.py ... \
        --ddp_find_unused_parameters false

Output folders follow `run_image_classification.py`: written beside `--output_dir` and moved into place when the run
succeeds; a non-empty `--output_dir` needs `--overwrite_output_dir true`. Bad arguments and data stop the script with
a one-line message and exit code 2.
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
from datasets import Dataset, DatasetDict, load_dataset
from datasets import Image as ImageFeature
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForSemanticSegmentation,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    set_seed,
)

EXAMPLES_DIR = Path(__file__).resolve().parent
try:  # the package installed (`pip install -e .`), or this repository's checkout
    import modeling_dart
except ImportError:  # pragma: no cover - running from a checkout without installing
    sys.path.insert(0, str(EXAMPLES_DIR.parent))
    import modeling_dart  # noqa: F401

from modeling_dart import (
    DartImageProcessor,
    DartReshaperConfig,
    DartReshaperForSemanticSegmentation,
    RmtConfig,
    load_scorer_trunk_weights,
)
from modeling_dart.configuration_reshaper_dart import (
    is_semantic_segmentation_config,
    resolve_backbone_config,
)
from modeling_dart.conversion_utils import (
    StagedOutput,
    UsageError,
    check_model_source,
    check_output_dir,
    load_from_hub,
    report_usage_error,
)
from modeling_dart.image_processing_dart import reduce_labels
from modeling_dart.model_card import write_model_card
from modeling_dart.modeling_reshaper_dart import segmentation_ignore_index
from modeling_dart.trunks_dart import TRUNKS

if str(EXAMPLES_DIR) not in sys.path:
    sys.path.insert(0, str(EXAMPLES_DIR))
from run_image_classification import (
    BACKBONE_PRESETS,
    CONFIG_FILE_KEYS,
    _close_process_group,
    apply_config_overrides,
    collect_config_overrides,
    existing_local_path,
    fsdp_on_cpu,
    implied_scorer_fields,
    load_metric,
    refuse_unknown_config_keys,
    set_scorer_trunk_frozen,
)

logger = logging.getLogger(__name__)

LOCAL_MEAN_IOU_METRIC = EXAMPLES_DIR / "metrics" / "mean_iou"
BUNDLED_DATA = EXAMPLES_DIR / "data" / "sparse_fashion_seg"
RESHAPER = DartReshaperConfig.model_type
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# backbones put into a UperNet when --backbone_config gives one (all their stages feed the decode head)
UPERNET_BACKBONES = ("convnext", "convnextv2", "swin", "rmt", "resnet", "dinat", "focalnet")


# ------------------------------------------------------------------------------------------------- arguments
@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hub dataset with image and annotation columns (ADE20K: scene_parse_150)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_dir: str | None = field(
        default=None, metadata={"help": "A folder of training pairs: images/ and masks/ with the same file stems."}
    )
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder of validation pairs: images/ and masks/ with the same file stems."}
    )
    id2label: str | None = field(
        default=None,
        metadata={"help": "A JSON file of class names by id (`{\"0\": \"background\", ...}`). Default: id2label.json "
                  "in --train_dir / --validation_dir or the folder above, or the model's own labels."},
    )
    reduce_labels: bool = field(
        default=False,
        metadata={"help": "Turn label 0 into 255 (ignored) and shift the others down by one (ADE20K's 0 'other')."},
    )
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of the training set held out when there is no validation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many evaluation examples."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(default="annotation", metadata={"help": "Column holding the label maps."})
    hflip_probability: float = field(default=0.5, metadata={"help": "Training augmentation: flip probability."})

    def __post_init__(self):
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise UsageError("Give a dataset: `--dataset_name` (Hub, image and annotation columns) or `--train_dir` / "
                             f"`--validation_dir` (local image/mask pairs, e.g. {BUNDLED_DATA}/train).")
        if self.dataset_name is not None and (self.train_dir or self.validation_dir):
            raise UsageError("`--dataset_name` and `--train_dir` / `--validation_dir` exclude each other.")
        for name in ("train_dir", "validation_dir"):
            folder = getattr(self, name)
            if folder is not None:
                if not os.path.isdir(folder):
                    raise UsageError(f"`--{name}` must be a folder holding images/ and masks/; {folder!r} is not a "
                                     "folder.")
                for sub in ("images", "masks"):
                    if not os.path.isdir(os.path.join(folder, sub)):
                        raise UsageError(f"`--{name}` {folder} has no {sub}/ folder (expected images/ and masks/ "
                                         "with the same file stems).")
        if self.id2label is not None and not os.path.isfile(self.id2label):
            raise UsageError(f"`--id2label` {self.id2label}: no such file.")
        if not 0 < self.train_val_split < 1:  # also refuses NaN
            raise UsageError(f"`--train_val_split` must be a fraction in (0, 1), got {self.train_val_split}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"`--{name}` must be a positive number of examples, got {value}.")
        if not 0 <= self.hflip_probability <= 1:  # also refuses NaN
            raise UsageError(f"`--hflip_probability` is a probability in [0, 1], got {self.hflip_probability}.")


@dataclass
class ModelArguments:
    """Which model to start from."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": f"A saved {RESHAPER} segmentation folder (or Hub id) to fine-tune."}
    )
    backbone_config: str | None = field(
        default=None,
        metadata={"help": "From scratch: the segmentation model behind the reshaper (a JSON object, config file or "
                  "folder: upernet, segformer, ...), or a backbone for a UperNet (an RMT preset "
                  f"{', '.join(BACKBONE_PRESETS)}, or a convnext / swin / rmt JSON object or file)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Reshaper fields, e.g. `image_size=128,score_grid_size=16`, and the segmentation model's as "
                  "`backbone_config.FIELD=value`. On a pretrained model only fields that keep the weights' shapes."},
    )
    image_size: int | None = field(default=None, metadata={"help": "Input resolution (config `image_size`)."})
    freeze_scorer_trunk: bool | None = field(
        default=None, metadata={"help": "Freeze the scorer's trunk (config `freeze_scorer_trunk`)."}
    )
    scorer_trunk_weights: str | None = field(
        default=None,
        metadata={"help": "Pretrained weights for the scorer's trunk: `efficientnet_lite0` (the packaged ImageNet "
                  "weights, for `scorer_trunk=efficientnet_lite0`) or a .pth state dict."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a head of another number of classes (re-initialised)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models and datasets."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (or `hf auth login`)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code from the Hub."})

    def __post_init__(self):
        if self.image_size is not None and self.image_size < 1:
            raise UsageError(f"`--image_size` must be a positive number of pixels, got {self.image_size}.")
        if self.model_name_or_path is not None and self.backbone_config is not None:
            raise UsageError("`--backbone_config` builds a new model; the model of `--model_name_or_path` keeps its "
                             "own (set its fields with `--config_overrides backbone_config.FIELD=value`).")


@dataclass
class SegmentationTrainingArguments(TrainingArguments):
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Write into a non-empty --output_dir (the run's files replace theirs)."}
    )


# ----------------------------------------------------------------------------------------------------- helpers
def load_segmentation_backbone(value: str) -> Any:
    """`--backbone_config` -> the segmentation model's configuration: a segmentation config as given, or a backbone
    config (RMT preset, JSON object, config file or folder) put into a UperNet that reads all its stages."""
    text = value.strip()
    shown = " ".join(text.split())
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if not text:
        raise UsageError("`--backbone_config` is empty; give a segmentation or backbone config (JSON object, file or "
                         f"folder) or an RMT preset ({', '.join(BACKBONE_PRESETS)}).")
    if text.lower() in BACKBONE_PRESETS:
        source: Any = RmtConfig.from_preset(BACKBONE_PRESETS[text.lower()])
    else:
        path = None if text.startswith("{") else existing_local_path(text)
        if path is None and not text.startswith("{"):
            raise UsageError(f"`--backbone_config` {shown!r} is no RMT preset ({', '.join(BACKBONE_PRESETS)}), JSON "
                             "object, config file or folder.")
        if path is not None and path.is_dir():
            path = path / "config.json"
            if not path.is_file():
                raise UsageError(f"`--backbone_config` {shown}: the folder holds no config.json.")
        try:
            source = json.loads(text if path is None else path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"`--backbone_config` {shown}: not a valid JSON configuration ({error}).") from error
        if not isinstance(source, dict) or not isinstance(source.get("model_type"), str):
            raise UsageError(f"`--backbone_config` {shown}: expected a JSON object with a model_type.")
        model_type = source["model_type"]
        if model_type == RESHAPER:
            raise UsageError(f"`--backbone_config` {shown} is a {RESHAPER} config; give it as --model_name_or_path "
                             "(a saved folder) instead.")
        if model_type in UPERNET_BACKBONES:
            fields = {k: v for k, v in source.items() if k not in CONFIG_FILE_KEYS}
            try:
                source = RmtConfig(**fields) if model_type == "rmt" else AutoConfig.for_model(model_type, **fields)
            except (ValueError, TypeError) as error:
                raise UsageError(f"`--backbone_config` {shown}: {error}") from error
            refuse_unknown_config_keys(source, fields, f"`--backbone_config` {shown}")
    if not isinstance(source, dict):  # a backbone: into a UperNet reading every stage
        stages = [name for name in source.stage_names if name != "stem"]
        fields = {k: v for k, v in source.to_dict().items() if k not in ("out_features", "out_indices")}
        fields.pop("model_type", None)
        fields.pop("transformers_version", None)
        backbone = type(source)(**fields, out_features=stages)
        # UperNet's auxiliary head reads the third feature map: a shallower backbone goes without it
        return UperNetConfig(backbone_config=backbone, use_auxiliary_head=len(stages) >= 3)
    try:
        config = resolve_backbone_config(source)
    except (ValueError, TypeError) as error:
        raise UsageError(f"`--backbone_config` {shown}: {error}") from error
    if not is_semantic_segmentation_config(config):
        raise UsageError(f"`--backbone_config` {shown}: a {config.model_type} model is no semantic segmentation "
                         f"model nor a UperNet backbone ({', '.join(UPERNET_BACKBONES)}).")
    refuse_unknown_config_keys(config, source, f"`--backbone_config` {shown}")
    return config


def read_id2label(path: str | Path, flag: str) -> dict[int, str]:
    try:
        raw = json.loads(Path(path).read_text())
        id2label = {int(key): str(value) for key, value in raw.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise UsageError(f"`{flag}` {path}: expected a JSON object of class names by integer id ({error}).") from error
    if sorted(id2label) != list(range(len(id2label))) or len(id2label) < 2:
        raise UsageError(f"`{flag}` {path}: the ids must be 0..n-1 for n >= 2 classes, got {sorted(id2label)[:8]}.")
    return id2label


def find_id2label(data_args: DataTrainingArguments) -> tuple[dict[int, str] | None, str]:
    """The class names: `--id2label`, else an id2label.json in a split folder or the folder above, else None."""
    if data_args.id2label is not None:
        return read_id2label(data_args.id2label, "--id2label"), "--id2label"
    for name in ("train_dir", "validation_dir"):
        folder = getattr(data_args, name)
        if folder is None:
            continue
        for candidate in (Path(folder) / "id2label.json", Path(folder).parent / "id2label.json"):
            if candidate.is_file():
                return read_id2label(candidate, f"--{name}"), f"--{name}"
    return None, ""


def image_mask_pairs(folder: str, flag: str) -> Dataset:
    """A local split folder as a `Dataset` with `image` and `annotation` columns (the Hub layout of ADE20K)."""
    images = {p.stem: p for p in sorted(Path(folder, "images").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(Path(folder, "masks").iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise UsageError(f"`{flag}` {folder}: images/ holds no image file ({', '.join(IMAGE_SUFFIXES)}).")
    unmatched = sorted(set(images) ^ set(masks))
    if unmatched:
        raise UsageError(f"`{flag}` {folder}: {len(unmatched)} image(s) or mask(s) without their pair, e.g. "
                         f"{unmatched[0]!r} (images/ and masks/ must hold the same file stems).")
    stems = sorted(images)
    rows = {"image": [str(images[s]) for s in stems], "annotation": [str(masks[s]) for s in stems]}
    return Dataset.from_dict(rows).cast_column("image", ImageFeature()).cast_column("annotation", ImageFeature())


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments, seed: int) -> DatasetDict:
    if data_args.dataset_name is not None:
        def load(path: str):
            return load_dataset(path, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
                                token=model_args.token)

        dataset = load_from_hub("--dataset_name", load, data_args.dataset_name)
        for column, flag in ((data_args.image_column_name, "--image_column_name"),
                             (data_args.label_column_name, "--label_column_name")):
            if column not in dataset["train" if "train" in dataset else next(iter(dataset))].column_names:
                raise UsageError(f"`{flag}` {column!r}: no such column in {data_args.dataset_name}.")
    else:
        splits = {}
        if data_args.train_dir is not None:
            splits["train"] = image_mask_pairs(data_args.train_dir, "--train_dir")
        if data_args.validation_dir is not None:
            splits["validation"] = image_mask_pairs(data_args.validation_dir, "--validation_dir")
        dataset = DatasetDict(splits)
    if "validation" not in dataset and "train" in dataset:
        parts = dataset["train"].train_test_split(data_args.train_val_split, seed=seed)
        dataset["train"], dataset["validation"] = parts["train"], parts["test"]
    return dataset


def load_mean_iou_metric(cache_dir: str | None = None):
    """`evaluate.load("mean_iou")`, falling back to the local module folder when the Hub is unreachable."""
    return load_metric("mean_iou", LOCAL_MEAN_IOU_METRIC, cache_dir)


def build_model(model_args: ModelArguments, id2label: dict[int, str] | None) -> DartReshaperForSemanticSegmentation:
    """The model to train: a saved folder (`--model_name_or_path`), or a fresh one (`--backbone_config`)."""
    overrides, flags = collect_config_overrides(model_args, ("image_size", "freeze_scorer_trunk"))
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
              "trust_remote_code": model_args.trust_remote_code}
    labels = {} if id2label is None else {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}
    if model_args.model_name_or_path:
        config = load_from_hub("--model_name_or_path", AutoConfig.from_pretrained, model_args.model_name_or_path,
                               **labels, **common)
        if config.model_type != RESHAPER or not is_semantic_segmentation_config(config.backbone_config):
            raise UsageError(f"`--model_name_or_path` {model_args.model_name_or_path} holds a "
                             f"{config.model_type!r} model, not a {RESHAPER} semantic segmentation model.")
        apply_config_overrides(config, overrides, flags)
        model = load_from_hub("--model_name_or_path", AutoModelForSemanticSegmentation.from_pretrained,
                              model_args.model_name_or_path, config=config,
                              ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **common)
    else:
        if model_args.backbone_config is None:
            raise UsageError("Give `--model_name_or_path` (a saved segmentation folder) or `--backbone_config` (the "
                             "segmentation model to build, e.g. a convnext JSON object for a UperNet).")
        if id2label is None:
            raise UsageError("A new model needs its classes: `--id2label` (a JSON file), or an id2label.json beside "
                             "the data.")
        # packaged --scorer_trunk_weights bring the recommended scorer unless --config_overrides chooses another
        implied = implied_scorer_fields(model_args.scorer_trunk_weights, RESHAPER, overrides)
        config = DartReshaperConfig(backbone_config=load_segmentation_backbone(model_args.backbone_config), **implied,
                                    **labels)
        apply_config_overrides(config, overrides, flags)
        try:
            model = DartReshaperForSemanticSegmentation(config)
        except (ValueError, TypeError, IndexError, RuntimeError) as error:
            raise UsageError(f"`--backbone_config` / `--config_overrides`: the model cannot be built ({error}).") from error
    if model_args.scorer_trunk_weights is not None:
        if model.config.scorer != "learned":
            raise UsageError("`--scorer_trunk_weights`: the model's scorer is 'uniform' (no trunk); set "
                             "`scorer=learned`.")
        try:
            load_scorer_trunk_weights(model, model_args.scorer_trunk_weights)
        except (ValueError, KeyError, OSError) as error:
            raise UsageError(f"`--scorer_trunk_weights` {model_args.scorer_trunk_weights}: {error}") from error
    if "freeze_scorer_trunk" in overrides and model.config.scorer == "learned":
        set_scorer_trunk_frozen(model, bool(overrides["freeze_scorer_trunk"]))
    return model


def build_image_processor(model_args: ModelArguments, model) -> DartImageProcessor:
    size = model.config.image_size
    if model_args.model_name_or_path:
        processor = load_from_hub("--model_name_or_path", AutoImageProcessor.from_pretrained,
                                  model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                  revision=model_args.model_revision, token=model_args.token)
        processor.size = {"height": size, "width": size}
        processor.do_center_crop = False
        return processor
    trunk = TRUNKS[model.config.scorer_trunk]  # the normalisation the trunk's pretrained weights expect
    return DartImageProcessor.for_semantic_segmentation(size, size, image_mean=list(trunk.input_mean),
                                                        image_std=list(trunk.input_std))


def label_array(mask: Image.Image, flag: str) -> np.ndarray:
    """A label map as a 2-D integer array: a palette or grey PNG as its values, an RGB mask's first channel."""
    if mask.mode in ("L", "P", "I", "I;16"):
        return np.asarray(mask, dtype=np.int64)
    if mask.mode in ("RGB", "RGBA", "LA"):  # a grey mask saved with colour channels
        return np.asarray(mask, dtype=np.int64)[..., 0]
    raise UsageError(f"`{flag}`: a mask of mode {mask.mode!r} is no label map (expected one channel of class ids).")


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.stack([e["labels"] for e in examples])}


class SegmentationTrainer(Trainer):
    """A Trainer whose model card is the DART one (written on `push_to_hub` and after training)."""

    def __init__(self, *args, card_kwargs: dict[str, Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.card_kwargs = dict(card_kwargs or {})
        self.model_accepts_loss_kwargs = False  # the loss is a batch mean

    def create_model_card(self, model_name: str | None = None, finetuned_from: str | None = None, dataset=None,
                          metrics: dict[str, float] | None = None, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        card = dict(self.card_kwargs)
        base_model = finetuned_from or card.pop("base_model", None)
        card.pop("base_model", None)
        write_model_card(
            self.args.output_dir, self.model.config, title=model_name or card.pop("title", None)
            or Path(self.args.output_dir).name, source=card.pop("source"), task="image-segmentation",
            base_model=None if base_model is None or os.path.isdir(base_model) else base_model,
            datasets=[dataset] if isinstance(dataset, str) else card.pop("datasets", None), metrics=metrics,
        )


def parse_args(args: list[str] | None = None):
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, SegmentationTrainingArguments))
    args = sys.argv[1:] if args is None else list(args)
    if not torch.cuda.is_available():
        # without it, every process of `accelerate launch` on a CPU-only machine trains on its own
        args = ["--use_cpu", "true", *args]
    return parser.parse_args_into_dataclasses(args=args)


# -------------------------------------------------------------------------------------------------------- main
def main(args: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, training_args = parse_args(args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning(f"Process rank: {training_args.process_index}, device: {training_args.device}, "
                   f"world_size: {training_args.world_size}")

    output_dir = Path(training_args.output_dir).expanduser().resolve()
    inputs = {"--train_dir": data_args.train_dir, "--validation_dir": data_args.validation_dir,
              "--id2label": data_args.id2label, "--model_name_or_path": model_args.model_name_or_path,
              "--scorer_trunk_weights": model_args.scorer_trunk_weights}
    if model_args.backbone_config and existing_local_path(model_args.backbone_config.strip()):
        inputs["--backbone_config"] = model_args.backbone_config
    check_output_dir(output_dir, overwrite=training_args.overwrite_output_dir, inputs=inputs,
                     overwrite_flag="--overwrite_output_dir")
    check_model_source("--model_name_or_path", model_args.model_name_or_path)
    if not training_args.do_train and not training_args.do_eval:
        raise UsageError("Nothing to do: give `--do_train true` and/or `--do_eval true`.")
    set_seed(training_args.seed)
    id2label, _ = find_id2label(data_args)
    model = build_model(model_args, id2label)  # flags checked before the data are read
    with StagedOutput(output_dir, main_process=training_args.should_save) as folder:
        training_args.output_dir = str(folder)
        metrics = train_and_evaluate(model, model_args, data_args, training_args, output_dir)
    training_args.output_dir = str(output_dir)
    return metrics


def train_and_evaluate(model, model_args, data_args, training_args, output_dir: Path) -> dict:
    num_labels, ignore_index = model.config.num_labels, segmentation_ignore_index(model.config.backbone_config)
    image_processor = build_image_processor(model_args, model)
    dataset = load_data(data_args, model_args, training_args.seed)
    image_column, label_column = data_args.image_column_name, data_args.label_column_name
    flags = {"train": "--train_dir", "validation": "--validation_dir"}

    def transforms(split: str, train: bool):
        flag = "--dataset_name" if data_args.dataset_name else flags[split]

        def apply(batch):
            images = [image.convert("RGB") for image in batch[image_column]]
            maps = [label_array(mask, flag) for mask in batch[label_column]]
            for image, label_map in zip(images, maps):
                if label_map.shape != (image.height, image.width):
                    raise UsageError(f"`{flag}`: a mask of {label_map.shape[0]}x{label_map.shape[1]} for an image of "
                                     f"{image.height}x{image.width} (height x width); each mask must match its image.")
                # the ids the model sees: with --reduce_labels, as the processor reduces them (0 -> 255, 255 stays)
                values = reduce_labels(label_map) if data_args.reduce_labels else label_map
                bad = values[(values != ignore_index) & ((values < 0) | (values >= num_labels))]
                if bad.size:
                    raise UsageError(f"`{flag}`: a mask holds class id {int(bad[0])}, outside [0, {num_labels}) "
                                     f"(the {num_labels} classes of the model) and not {ignore_index} (ignored); "
                                     "check --id2label" + (" or --reduce_labels." if not data_args.reduce_labels
                                                           else "."))
            if train:  # the same horizontal flip for an image and its mask
                flips = torch.rand(len(images)) < data_args.hflip_probability
                images = [im.transpose(Image.FLIP_LEFT_RIGHT) if f else im for im, f in zip(images, flips)]
                maps = [m[:, ::-1].copy() if f else m for m, f in zip(maps, flips)]
            encoded = image_processor(images, segmentation_maps=maps, do_reduce_labels=data_args.reduce_labels,
                                      return_tensors="pt")
            return {"pixel_values": list(encoded["pixel_values"]), "labels": list(encoded["labels"])}

        return apply

    def prepare(split: str, max_samples: int | None, train: bool):
        if split not in dataset:
            raise UsageError(f"--do_{'train' if train else 'eval'} needs a {split} split (--{split}_dir or a dataset "
                             f"with a `{split}` split).")
        subset = dataset[split]
        if max_samples is not None:
            subset = subset.shuffle(seed=training_args.seed).select(range(min(max_samples, len(subset))))
        subset.set_transform(transforms(split, train))
        return subset

    train_dataset = prepare("train", data_args.max_train_samples, True) if training_args.do_train else None
    eval_dataset = prepare("validation", data_args.max_eval_samples, False) if training_args.do_eval else None

    metric = load_mean_iou_metric(model_args.cache_dir)

    def preprocess_logits_for_metrics(logits, labels):
        logits = logits[0] if isinstance(logits, tuple) else logits
        return logits.argmax(dim=1)  # the classes on the input grid: what is gathered over the processes

    def compute_metrics(eval_prediction):
        predictions, references = eval_prediction.predictions, eval_prediction.label_ids
        result = metric.compute(predictions=list(predictions), references=list(references), num_labels=num_labels,
                                ignore_index=ignore_index, reduce_labels=False)
        out = {key: float(value) for key, value in result.items() if not isinstance(value, np.ndarray)}
        for name, value in zip((model.config.id2label[i] for i in range(num_labels)), result["per_category_iou"]):
            out[f"iou_{name}"] = float(value)
        return out

    if training_args.remove_unused_columns:  # the raw columns become pixel_values/labels on the fly
        training_args = dataclasses.replace(training_args, remove_unused_columns=False)
    bundled = data_args.train_dir and Path(data_args.train_dir).resolve().parent == BUNDLED_DATA.resolve()
    dataset_label = data_args.dataset_name or ("sparse_fashion_seg (bundled Fashion-MNIST canvases with masks)"
                                               if bundled else f"image/mask pairs {data_args.train_dir}")
    card_kwargs = {
        "title": output_dir.name,
        "base_model": model_args.model_name_or_path,
        "datasets": [data_args.dataset_name] if data_args.dataset_name else None,
        "source": ((f"Fine-tuned from `{model_args.model_name_or_path}`" if model_args.model_name_or_path
                    else "Trained from a freshly initialised DART reshaper config")
                   + f" with `examples/run_semantic_segmentation.py` on {dataset_label}."),
    }
    with fsdp_on_cpu():
        trainer = SegmentationTrainer(
            model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
            compute_metrics=compute_metrics, preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            processing_class=image_processor, data_collator=collate_fn, card_kwargs=card_kwargs,
        )

    all_metrics: dict[str, float] = {"world_size": training_args.world_size}
    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()  # model.safetensors + config.json + preprocessor_config.json (+ modeling code)
        train_metrics = {**train_result.metrics, "train_samples": len(train_dataset),
                         "world_size": training_args.world_size}
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        all_metrics.update(train_metrics)
    if training_args.do_eval:
        eval_metrics = {**trainer.evaluate(), "eval_samples": len(eval_dataset)}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        all_metrics.update(eval_metrics)

    card_metrics = {key: value for key, value in all_metrics.items() if value is not None and key in (
        "eval_mean_iou", "eval_mean_accuracy", "eval_overall_accuracy", "eval_loss", "train_loss", "world_size")}
    kwargs = {"finetuned_from": model_args.model_name_or_path, "metrics": card_metrics}
    if data_args.dataset_name is not None:
        kwargs["dataset"] = data_args.dataset_name
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)
    if trainer.is_world_process_zero() and "eval_mean_iou" in all_metrics:
        print(f"eval_mean_iou = {all_metrics['eval_mean_iou']:.4f} ({num_labels} classes); model saved to "
              f"{output_dir}")
    return all_metrics


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
