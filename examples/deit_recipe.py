"""The DeiT training recipe (Touvron et al., 2021), as the original DART release trains with it, on PIL + torch only
(no timm, no torchvision): RandAugment, random erasing, mixup / cutmix with label smoothing (soft targets), a
repeated-augmentation sampler for several processes, an exponential moving average (EMA) of the weights, layer-wise
learning-rate decay, and the learning rate scaled by the total batch size.

Every random draw comes from a numpy generator keyed by what it augments -- `(seed, epoch, copy, index)` for an image,
`(seed, process, step, micro-batch)` for a batch -- never from a stream whose position depends on what ran before.
An interrupted run that is resumed from a checkpoint therefore draws exactly what an uninterrupted one draws, and
DataLoader workers need no seeding of their own.

`examples/run_image_classification.py` switches each element on with its own argument (see its `--help` and
`--preset deit_imagenet`); the pieces are importable on their own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
import torch
from PIL import ImageEnhance, ImageOps
from torch import nn
from transformers import TrainerCallback

from modeling_dart.image_processing_dart import random_resized_crop_and_flip

# ------------------------------------------------------------------------------------------------ RandAugment
# Levels follow the usual RandAugment conventions (magnitudes on a 0..10 scale). The "increasing" variants (`inc1`)
# make every operation stronger as the magnitude grows (posterize keeps fewer bits, solarize lowers its threshold,
# the enhancements move further from 1 in a random direction).
MAGNITUDE_SCALE = 10.0
_RESAMPLE = {"nearest": PIL.Image.Resampling.NEAREST, "bilinear": PIL.Image.Resampling.BILINEAR,
             "bicubic": PIL.Image.Resampling.BICUBIC}


def _signed(value: float, rng: np.random.Generator) -> float:
    """`value` or `-value` with equal probability."""
    return -value if rng.random() < 0.5 else value


def _affine(image: PIL.Image.Image, matrix: tuple, fill, resample) -> PIL.Image.Image:
    return image.transform(image.size, PIL.Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _posterize(image: PIL.Image.Image, bits: int) -> PIL.Image.Image:
    """Keep the `bits` highest bits of every channel (0 bits: black; PIL's own posterize needs 1..8)."""
    if bits >= 8:
        return image
    mask = ~(2 ** (8 - max(bits, 0)) - 1) & 0xFF
    return image.point([value & mask for value in range(256)] * len(image.getbands()))


def _solarize_add(image: PIL.Image.Image, amount: int, threshold: int = 128) -> PIL.Image.Image:
    table = [min(255, value + amount) if value < threshold else value for value in range(256)]
    return image.point(table * len(image.getbands()))


class RandAugmentOp:
    """One RandAugment operation: applied with probability `prob`, at a magnitude drawn around `magnitude`."""

    def __init__(self, name: str, prob: float, magnitude: float, magnitude_std: float, magnitude_max: float,
                 fill: tuple[int, ...], resample, increasing: bool):
        self.name, self.prob = name, prob
        self.magnitude, self.magnitude_std, self.magnitude_max = magnitude, magnitude_std, magnitude_max
        self.fill, self.resample, self.increasing = fill, resample, increasing

    def draw_magnitude(self, rng: np.random.Generator) -> float:
        magnitude = self.magnitude
        if self.magnitude_std == float("inf") or self.magnitude_std > 100:
            magnitude = rng.uniform(0.0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = rng.normal(magnitude, self.magnitude_std)
        return float(min(max(magnitude, 0.0), self.magnitude_max))

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        if self.prob < 1.0 and rng.random() > self.prob:
            return image
        level = self.draw_magnitude(rng) / MAGNITUDE_SCALE  # 0..1 (more when magnitude_max exceeds 10)
        name = self.name
        if name == "AutoContrast":
            return ImageOps.autocontrast(image)
        if name == "Equalize":
            return ImageOps.equalize(image)
        if name == "Invert":
            return ImageOps.invert(image)
        if name == "Rotate":
            return image.rotate(_signed(30.0 * level, rng), resample=self.resample, fillcolor=self.fill)
        if name == "Posterize":
            bits = 4 - int(4 * level) if self.increasing else int(4 * level) + 4
            return _posterize(image, bits)
        if name == "Solarize":
            threshold = 256 - int(256 * level) if self.increasing else int(256 * level)
            return ImageOps.solarize(image, threshold)
        if name == "SolarizeAdd":
            return _solarize_add(image, int(110 * level))
        if name in ("Color", "Contrast", "Brightness", "Sharpness"):
            factor = 1.0 + _signed(0.9 * level, rng) if self.increasing else 0.1 + 1.8 * level
            return getattr(ImageEnhance, name)(image).enhance(factor)
        if name == "ShearX":
            return _affine(image, (1, _signed(0.3 * level, rng), 0, 0, 1, 0), self.fill, self.resample)
        if name == "ShearY":
            return _affine(image, (1, 0, 0, _signed(0.3 * level, rng), 1, 0), self.fill, self.resample)
        if name == "TranslateXRel":
            return _affine(image, (1, 0, _signed(0.45 * level, rng) * image.size[0], 0, 1, 0), self.fill, self.resample)
        if name == "TranslateYRel":
            return _affine(image, (1, 0, 0, 0, 1, _signed(0.45 * level, rng) * image.size[1]), self.fill, self.resample)
        raise ValueError(f"unknown RandAugment operation {name!r}")


RAND_AUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                    "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


class RandAugment:
    """RandAugment on PIL images from a policy string such as DeiT's `"rand-m9-mstd0.5-inc1"`.

    Policy fields after `rand`: `m` magnitude (0..10, default 10), `n` operations per image (default 2), `mstd`
    standard deviation of the magnitude noise (default 0; above 100 the magnitude is uniform in [0, m]), `mmax` its
    upper clip (default 10), `inc` 1 for the increasing-strength variants, `p` probability of each operation
    (default 0.5). The `n` operations are drawn uniformly with replacement from the 15 of `RAND_AUGMENT_OPS`.

    Args:
        policy (`str`): the policy string.
        fill (`tuple[int, ...]`): colour of the area that rotations / shears / translations uncover (the dataset
            mean in 0..255, as DeiT does).
        resample (`str`): `"bilinear"` or `"bicubic"` (DeiT: bicubic) for the geometric operations.
    """

    def __init__(self, policy: str = "rand-m9-mstd0.5-inc1", fill: Sequence[int] = (124, 116, 104),
                 resample: str = "bicubic"):
        if not isinstance(policy, str) or policy.split("-")[0] != "rand":
            raise ValueError(f"`rand_augment` must be a policy string like 'rand-m9-mstd0.5-inc1', got {policy!r}.")
        if resample not in _RESAMPLE:
            raise ValueError(f"`resample` must be one of {sorted(_RESAMPLE)}, got {resample!r}.")
        settings = {"m": 10.0, "n": 2, "mstd": 0.0, "mmax": MAGNITUDE_SCALE, "inc": 0, "p": 0.5}
        for part in policy.split("-")[1:]:
            match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)([0-9.]+|inf)", part)
            if not match:
                raise ValueError(f"`rand_augment` {policy!r}: cannot read {part!r} (fields: m, n, mstd, mmax, inc, p).")
            key, value = match.groups()
            settings[key] = float(value)
        if not 0 <= settings["p"] <= 1 or settings["n"] < 1 or settings["m"] < 0:
            raise ValueError(f"`rand_augment` {policy!r}: need n >= 1, m >= 0 and p in [0, 1].")
        self.policy, self.num_ops = policy, int(settings["n"])
        self.ops = [RandAugmentOp(name, settings["p"], settings["m"], settings["mstd"], settings["mmax"],
                                  tuple(int(v) for v in fill), _RESAMPLE[resample], bool(settings["inc"]))
                    for name in RAND_AUGMENT_OPS]

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator) -> PIL.Image.Image:
        for index in rng.integers(0, len(self.ops), size=self.num_ops):
            image = self.ops[int(index)](image, rng)
        return image

    def __repr__(self) -> str:
        return f"RandAugment({self.policy!r})"


# --------------------------------------------------------------------------------------------- random erasing
@dataclass
class RandomErasing:
    """Erase random rectangles of a normalised image tensor (Zhong et al., 2020), as DeiT does after normalisation.

    With probability `probability`, `count` rectangles, each of area fraction in `[min_area, max_area] / count` and
    aspect ratio log-uniform in `[min_aspect, 1 / min_aspect]` (10 attempts each to fit inside the image), are filled
    with `mode` values: `"pixel"` (a standard normal draw per pixel and channel; DeiT), `"rand"` (one per channel) or
    `"const"` (zeros, the mean of normalised data).
    """

    probability: float = 0.25
    mode: str = "pixel"
    count: int = 1
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"`random_erasing` is a probability in [0, 1], got {self.probability!r}.")
        if self.mode not in ("pixel", "rand", "const"):
            raise ValueError(f"`random_erasing_mode` must be 'pixel', 'rand' or 'const', got {self.mode!r}.")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"`random_erasing_count` must be a positive integer, got {self.count!r}.")
        if not 0 < self.min_area <= self.max_area <= 1 or not 0 < self.min_aspect <= 1:
            raise ValueError("RandomErasing: need 0 < min_area <= max_area <= 1 and 0 < min_aspect <= 1.")

    def __call__(self, pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Erase in place and return `pixels` (`(channels, height, width)`)."""
        if rng.random() >= self.probability:
            return pixels
        channels, height, width = pixels.shape
        log_aspect = (math.log(self.min_aspect), -math.log(self.min_aspect))
        for _ in range(self.count):
            for _attempt in range(10):
                area = rng.uniform(self.min_area, self.max_area) * height * width / self.count
                aspect = math.exp(rng.uniform(*log_aspect))
                h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if 0 < h < height and 0 < w < width:
                    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                    shape = {"pixel": (channels, h, w), "rand": (channels, 1, 1), "const": None}[self.mode]
                    values = 0.0 if shape is None else torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
                    pixels[:, top : top + h, left : left + w] = values
                    break
        return pixels


# -------------------------------------------------------------------------------------------- mixup / cutmix
def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with label smoothing: `1 - smoothing + smoothing / C` on the label, `smoothing / C` elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.view(-1, 1).long(), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `-sum_c target_c * log_softmax(logits)_c`."""
    return torch.sum(-targets * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class MixupCutmix:
    """Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019) on a batch, with label-smoothed soft targets.

    Per batch: with probability `prob` the batch is mixed with itself in reverse order; when both alphas are positive,
    CutMix is chosen with probability `switch_prob`, else Mixup. The mixing weight `lam` is drawn from
    `Beta(alpha, alpha)`. CutMix pastes a box of area `1 - lam` (centre uniform, clipped to the image) and `lam` is
    then corrected to the area actually kept. Targets: `lam * smooth(y) + (1 - lam) * smooth(y reversed)`.

    Args:
        num_classes (`int`), mixup_alpha (`float`, DeiT 0.8), cutmix_alpha (`float`, DeiT 1.0), prob (`float`, 1.0),
        switch_prob (`float`, 0.5), label_smoothing (`float`, DeiT 0.1).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive integer, got {num_classes!r}.")
        for name, value in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` (a Beta distribution's alpha) must be >= 0, got {value!r}.")
        for name, value in (("mixup_prob", prob), ("mixup_switch_prob", switch_prob)):
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"`{name}` is a probability in [0, 1], got {value!r}.")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"`label_smoothing_factor` must be in [0, 1), got {label_smoothing!r}.")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob, self.label_smoothing = float(prob), float(switch_prob), float(label_smoothing)

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def draw(self, rng: np.random.Generator) -> tuple[float, bool]:
        """`(lam, use_cutmix)` for one batch."""
        if not self.active or rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """`(top, bottom, left, right)` of a box of area about `(1 - lam) * height * width`, clipped to the image."""
        side = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * side), int(width * side)
        centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = np.clip([centre_y - cut_h // 2, centre_y + cut_h // 2], 0, height)
        left, right = np.clip([centre_x - cut_w // 2, centre_x + cut_w // 2], 0, width)
        return int(top), int(bottom), int(left), int(right)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
        """`(mixed pixel_values, soft targets (batch, num_classes))`; `pixel_values` is not modified."""
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"`labels` must be class indices of shape (batch,), got {tuple(labels.shape)} "
                             f"{labels.dtype}.")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"`labels` must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}.")
        lam, use_cutmix = self.draw(rng)
        mixed = pixel_values
        if lam < 1.0:
            reversed_pixels = pixel_values.flip(0)
            if use_cutmix:
                height, width = pixel_values.shape[-2:]
                top, bottom, left, right = self.cutmix_box(height, width, lam, rng)
                mixed = pixel_values.clone()
                mixed[..., top:bottom, left:right] = reversed_pixels[..., top:bottom, left:right]
                lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
            else:
                mixed = pixel_values * lam + reversed_pixels * (1.0 - lam)
        targets = soft_targets(labels, self.num_classes, self.label_smoothing)
        return mixed, targets * lam + targets.flip(0) * (1.0 - lam)


# ---------------------------------------------------------------------------------- keyed sampling and data
class SampleKey(NamedTuple):
    """What one training sample is: dataset `index`, `epoch`, and which augmented `copy` of it (repeated aug)."""

    index: int
    epoch: int
    copy: int


def sample_generator(seed: int, key: SampleKey) -> np.random.Generator:
    """The numpy generator of one augmented sample (independent of order, process and worker)."""
    return np.random.default_rng([seed, key.epoch, key.copy, key.index])


class RepeatedAugmentationSampler(torch.utils.data.Sampler):
    """Per-process sampler yielding `SampleKey`s, with repeated augmentation (Hoffer et al., 2020) as DeiT uses it.

    Each epoch: a permutation of the dataset (seeded by `(seed, epoch)`, the same on every process); each index is
    repeated `num_repeats` times in a row (copies 0..num_repeats-1), the list is padded by wrapping around to a
    multiple of `num_replicas`, and process `rank` takes every `num_replicas`-th entry from `rank` on -- so the copies
    of an image land on different processes. With `num_repeats > 1` each process then keeps its first
    `len(dataset) // num_replicas` entries: an epoch costs what a plain epoch costs (DeiT also rounds the dataset down
    to a multiple of 256 images; we do not). With `num_repeats == 1` it is a plain distributed shuffle
    (`ceil(len(dataset) / num_replicas)` samples per process).

    The Trainer sees one sampler per process, so its own sharding across processes must be switched off (the example's
    trainer does so, as Transformers does for its rank-aware samplers).
    """

    def __init__(self, num_samples: int, num_repeats: int = 3, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        for name, value in (("num_samples", num_samples), ("num_repeats", num_repeats),
                            ("num_replicas", num_replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank!r}.")
        self.num_samples, self.num_repeats, self.num_replicas, self.rank = num_samples, num_repeats, num_replicas, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.per_replica = math.ceil(num_samples * num_repeats / num_replicas)
        self.num_selected = num_samples // num_replicas if num_repeats > 1 else self.per_replica
        if self.num_selected == 0:
            raise ValueError(f"{num_samples} samples cannot be shared by {num_replicas} processes.")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_selected

    def __iter__(self) -> Iterator[SampleKey]:
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples) if self.shuffle
                 else np.arange(self.num_samples))
        indices = np.repeat(order, self.num_repeats)
        copies = np.tile(np.arange(self.num_repeats), self.num_samples)
        total = self.per_replica * self.num_replicas
        if total > len(indices):  # wrap around
            extra = total - len(indices)
            indices = np.concatenate([indices, np.resize(indices, extra)])
            copies = np.concatenate([copies, np.resize(copies, extra)])
        mine = slice(self.rank, total, self.num_replicas)
        for index, copy in list(zip(indices[mine], copies[mine]))[: self.num_selected]:
            yield SampleKey(int(index), self.epoch, int(copy))


class AugmentedImageDataset(torch.utils.data.Dataset):
    """A map-style image dataset whose items are augmented from their `SampleKey` (an int means `(index, 0, 0)`).

    Args:
        dataset: rows with an image and a label (e.g. a `datasets.Dataset`).
        transform (`Callable[[PIL.Image.Image, np.random.Generator], torch.Tensor]`): the per-image augmentation.
        label_id (`Callable[[Any], int]`): maps a row's label to a class id.
        seed (`int`): the run's seed, part of every sample's key.
    """

    def __init__(self, dataset, transform: Callable, image_column: str = "image", label_column: str = "label",
                 label_id: Callable[[Any], int] = int, seed: int = 0):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.image_column, self.label_column, self.label_id = image_column, label_column, label_id

    def __len__(self) -> int:
        return len(self.dataset)

    @staticmethod
    def _as_key(key) -> SampleKey:
        return key if isinstance(key, SampleKey) else SampleKey(int(key), 0, 0)

    def __getitem__(self, key) -> dict[str, Any]:
        key = self._as_key(key)
        return self._augment(key, self.dataset[key.index])

    def __getitems__(self, keys: list) -> list[dict[str, Any]]:
        """A whole batch (the DataLoader calls this when it exists): the same items as `__getitem__` key by key, but
        the rows of a `datasets.Dataset` are read in one call (64 of the quick start's JPEG rows, read and augmented:
        50 instead of 70 ms)."""
        keys = [self._as_key(key) for key in keys]
        read_batch = getattr(self.dataset, "__getitems__", None)
        rows = read_batch([key.index for key in keys]) if read_batch is not None else [
            self.dataset[key.index] for key in keys]
        return [self._augment(key, row) for key, row in zip(keys, rows)]

    def _augment(self, key: SampleKey, row) -> dict[str, Any]:
        image = row[self.image_column].convert("RGB")
        pixel_values = self.transform(image, sample_generator(self.seed, key))
        return {"pixel_values": pixel_values, "labels": self.label_id(row[self.label_column])}


class TrainAugmentation:
    """The per-image training augmentation of DeiT: random resized crop + horizontal flip, RandAugment (optional),
    rescale + normalise with the image processor, random erasing (optional). `__call__(image, rng)` returns the
    `(channels, height, width)` float tensor."""

    def __init__(self, image_processor, scale: tuple[float, float] = (0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 hflip: float = 0.5, rand_augment: RandAugment | None = None, erasing: RandomErasing | None = None):
        self.image_processor, self.scale, self.ratio, self.hflip = image_processor, scale, ratio, hflip
        crop = image_processor.crop_size
        self.size = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop.height, crop.width)
        self.rand_augment, self.erasing = rand_augment, erasing

    def __call__(self, image: PIL.Image.Image, rng: np.random.Generator) -> torch.Tensor:
        crop = random_resized_crop_and_flip(image, self.size, scale=self.scale, ratio=self.ratio, hflip=self.hflip,
                                            rng=rng, resample=self.image_processor.resample)
        if self.rand_augment is not None:
            crop = self.rand_augment(crop, rng)
        pixels = self.image_processor(crop, do_resize=False, do_center_crop=False, return_tensors="pt")
        pixels = pixels["pixel_values"][0]
        if self.erasing is not None:
            pixels = self.erasing(pixels, rng)
        return pixels


# ------------------------------------------------------------------------------------------------------- EMA
class ModelEmaCallback(TrainerCallback):
    """An exponential moving average of the model's weights, updated after every optimizer step:
    `ema = decay * ema + (1 - decay) * weights` for floating-point tensors (buffers included), a copy for the others.

    Saved into every checkpoint (`model_ema.safetensors`) and read back on resume, so a resumed run carries the same
    average. DeiT keeps it as `model_ema` (decay 0.99996) and evaluates it beside the model.
    """

    FILE = "model_ema.safetensors"

    def __init__(self, decay: float = 0.99996, resume_from: str | None = None):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"`model_ema_decay` must be in [0, 1), got {decay!r}.")
        self.decay, self.resume_from = float(decay), resume_from
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.state = {key: value.detach().clone() for key, value in model.state_dict().items()}
        if self.resume_from is not None:
            path = Path(self.resume_from) / self.FILE
            if not path.is_file():
                raise FileNotFoundError(f"resuming with --model_ema but {path} is missing (checkpoint saved without EMA).")
            from safetensors.torch import load_file

            saved = load_file(path)
            if set(saved) != set(self.state):
                raise ValueError(f"{path} does not hold this model's tensors.")
            for key, value in saved.items():
                self.state[key].copy_(value)

    @torch.no_grad()
    def on_step_end(self, args, state, control, model=None, **kwargs):
        for key, value in model.state_dict().items():
            average = self.state[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach().to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.state is not None:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in self.state.items()}, folder / self.FILE)

    def swap_into(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the average into `model`; return the weights it had (give them to `restore`)."""
        if self.state is None:
            raise RuntimeError("no EMA yet: train first.")
        kept = {key: value.detach().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(self.state, strict=True)
        return kept

    @staticmethod
    def restore(model: nn.Module, kept: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(kept, strict=True)


# --------------------------------------------------------------------------------------- optimiser settings
NO_WEIGHT_DECAY_NAMES = ("cls_token", "position_embeddings", "temporal_position_embeddings")


def layer_id(name: str, num_layers: int) -> int:
    """Depth of a DART parameter for layer-wise lr decay: the embeddings (patch projection, cls token, positions) 0,
    block `i` `i + 1`, the final norm, the classifier and the scorer `num_layers + 1` (the scorer is a separate,
    small network that a wrapped backbone has never trained: it keeps the full learning rate)."""
    if ".embeddings.scorer." in name:
        return num_layers + 1
    if ".embeddings." in name:
        return 0
    match = re.search(r"\.encoder\.(?:layer|layers)\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def parameter_groups(model: nn.Module, learning_rate: float, weight_decay: float, layer_decay: float = 1.0,
                     num_layers: int | None = None) -> list[dict[str, Any]]:
    """Optimizer groups with DeiT's weight-decay rule and layer-wise learning-rate decay (BEiT-style fine-tuning).

    No weight decay on 1-D tensors (norms, biases) and on the cls token and position tables; the others get
    `weight_decay`. A parameter at depth `layer_id` (see [`layer_id`]) gets `learning_rate * layer_decay **
    (num_layers + 1 - layer_id)`: the classifier the full rate, each block below a factor `layer_decay` less.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"`layer_decay` must be in (0, 1], got {layer_decay!r}.")
    if num_layers is None:
        num_layers = model.config.num_hidden_layers
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        depth = layer_id(name, num_layers)
        no_decay = parameter.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY_NAMES
        scale = layer_decay ** (num_layers + 1 - depth)
        group = groups.setdefault((depth, no_decay), {
            "params": [], "param_names": [], "lr": learning_rate * scale, "lr_scale": scale, "layer_id": depth,
            "weight_decay": 0.0 if no_decay else weight_decay,
        })
        group["params"].append(parameter)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def scaled_learning_rate(base_lr: float, per_device_batch: int, world_size: int, accumulation: int,
                         base_batch_size: int = 512) -> float:
    """DeiT's linear scaling rule: `base_lr * total_batch / base_batch_size` (DeiT: base 512)."""
    if base_batch_size < 1:
        raise ValueError(f"`base_batch_size` must be a positive integer, got {base_batch_size!r}.")
    return base_lr * per_device_batch * world_size * accumulation / base_batch_size


__all__ = ["RandAugment", "RandAugmentOp", "RAND_AUGMENT_OPS", "RandomErasing", "MixupCutmix", "soft_targets",
           "soft_target_cross_entropy", "SampleKey", "sample_generator", "RepeatedAugmentationSampler",
           "AugmentedImageDataset", "TrainAugmentation", "ModelEmaCallback", "layer_id", "parameter_groups",
           "scaled_learning_rate"]
