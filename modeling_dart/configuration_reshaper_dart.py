# Copyright 2026 The modeling_dart Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Configuration of DART's second form: the image reshaper in front of any image classifier
(`DartReshaperConfig`, model type `dart_reshaper`)."""

from __future__ import annotations

import copy

from transformers import PreTrainedConfig
from transformers.utils import auto_docstring

from .configuration_dart import DartConfig
from .configuration_rmt import RmtConfig
from .trunk_tables_dart import TRUNKS, default_scorer_hidden_size

_SCORERS = ("learned", "uniform")
_NORMALIZATIONS = ("image", "batch")
_COLUMN_SAMPLINGS = ("band", "strip")
_SEGMENTATION_LOSS_GRIDS = ("warped", "input")

# The original DAIR's behaviour, which the released darmt-L6 needs (see `DartImageReshaper`): batch-level score
# standardisation, the first column edge one warped pixel in, the edge scale read from the batch's first image, and
# column sampling along the whole strip of row bands.
DAIR_PARITY_OPTIONS = {
    "score_normalization": "batch",
    "first_edge_at_one": True,
    "edge_scale_from_first_image": True,
    "column_sampling": "strip",
}

# Backbone configurations this package defines, by model type: they are rebuilt from a saved `backbone_config` dict
# even where the package is not installed and the folder's remote code is all there is (then `CONFIG_MAPPING` does not
# know them).
LOCAL_BACKBONE_CONFIGS = {RmtConfig.model_type: RmtConfig}

# the label fields that the composite configuration shares with its backbone's
_SHARED_LABEL_FIELDS = ("id2label", "label2id", "problem_type")


def _config_class(model_type: str) -> type:
    if model_type in LOCAL_BACKBONE_CONFIGS:
        return LOCAL_BACKBONE_CONFIGS[model_type]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"DartReshaperConfig: `backbone_config` has model_type {model_type!r}, which is not a "
                         "registered configuration (import the package that defines it first).")
    return CONFIG_MAPPING[model_type]


def is_image_classifier_config(config) -> bool:
    """Whether `AutoModelForImageClassification` (or this package, for RMT) builds a classifier from `config`."""
    if getattr(config, "model_type", None) in LOCAL_BACKBONE_CONFIGS:
        return True
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    return type(config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING


def is_semantic_segmentation_config(config) -> bool:
    """Whether `AutoModelForSemanticSegmentation` builds a segmentation model from `config` (UperNet, Segformer,
    BEiT, DPT, ...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING

    return type(config) in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING


def _resolve_nested_local_configs(fields: dict) -> dict:
    """A segmentation config's own `backbone_config` (UperNet's) given as a dict of this package's model type (RMT)
    is rebuilt here: where only the folder's remote code defines it, Transformers' `CONFIG_MAPPING` does not know it."""
    nested = fields.get("backbone_config")
    if isinstance(nested, dict) and nested.get("model_type") in LOCAL_BACKBONE_CONFIGS:
        nested = dict(nested)
        config_class = LOCAL_BACKBONE_CONFIGS[nested.pop("model_type")]
        nested.pop("transformers_version", None)
        fields = {**fields, "backbone_config": config_class(**nested)}
    return fields


def resolve_backbone_config(backbone_config) -> PreTrainedConfig:
    """A backbone configuration from a config object, a dict with its `model_type` (as `config.json` stores it), or
    `None` (the default, RMT-T3); raise a `TypeError` / `ValueError` naming `backbone_config` for anything else or for
    the configuration of a model that is neither an image classifier nor a semantic segmentation model."""
    if backbone_config is None:
        backbone_config = RmtConfig()
    elif isinstance(backbone_config, dict):
        fields = dict(backbone_config)
        model_type = fields.pop("model_type", None)
        if not isinstance(model_type, str):
            raise ValueError("DartReshaperConfig: a `backbone_config` dict must name its `model_type` (e.g. 'rmt', "
                             f"'convnext', 'resnet', 'swin', 'upernet'), got keys {sorted(backbone_config)[:8]}.")
        fields.pop("transformers_version", None)
        backbone_config = _config_class(model_type)(**_resolve_nested_local_configs(fields))
    elif not isinstance(backbone_config, PreTrainedConfig):
        raise TypeError(f"DartReshaperConfig: `backbone_config` must be a configuration, a dict with its "
                        f"`model_type`, or None, got {type(backbone_config).__name__}.")
    if not (is_image_classifier_config(backbone_config) or is_semantic_segmentation_config(backbone_config)):
        raise ValueError(
            f"DartReshaperConfig: `backbone_config` must configure an image classifier (a model type with an "
            f"`AutoModelForImageClassification` class, e.g. 'rmt', 'convnext', 'resnet', 'swin') or a semantic "
            f"segmentation model (an `AutoModelForSemanticSegmentation` class, e.g. 'upernet', 'segformer'), got "
            f"{type(backbone_config).__name__} (model_type {getattr(backbone_config, 'model_type', None)!r})."
        )
    return backbone_config


# `@strict` (Transformers' dataclass configs) is left out on purpose, as for `DartConfig`: it raises huggingface_hub's
# `StrictDataclassFieldValidationError`, which is neither a `ValueError` nor a `TypeError`; the fields are checked here.
@auto_docstring(
    custom_intro="""Configuration of a DART reshaper model ([`DartReshaperForImageClassification`], [`DartReshaperForSemanticSegmentation`]): DART's image reshaper (the original's `DynamicAdaptiveImageReshaper`, "DAIR") warps the input into a smaller image whose rows and columns give more pixels to the parts with high scores, and the image classifier or semantic segmentation model configured by `backbone_config` (as `UperNetConfig` nests its backbone's) takes the warped image; a segmentation model's logits are warped back to the input grid. The labels (`id2label`, `label2id`, `num_labels`, `problem_type`) are the backbone's: setting them here sets them there. The defaults are clean for new models (per-image scores, the first edge at 0, exact scales, band sampling); `DAIR_PARITY_OPTIONS` holds the original's behaviour, which the released darmt-L6 needs (`DartReshaperConfig.darmt_l6()`).""",
)
class DartReshaperConfig(PreTrainedConfig):  # trf-ignore: TRF010
    r"""
    backbone_config (`PreTrainedConfig` or `dict`, *optional*):
        Configuration of the model that takes the warped image: for [`DartReshaperForImageClassification`] an
        [`RmtConfig`] or any configuration with an `AutoModelForImageClassification` class (Transformers'
        `ConvNextConfig`, `SwinConfig`, `ResNetConfig`, ...); for [`DartReshaperForSemanticSegmentation`] any
        configuration with an `AutoModelForSemanticSegmentation` class (`UperNetConfig` with a Swin, ConvNeXt or RMT
        backbone, `SegformerConfig`, ...). A dict names its `model_type` (as `config.json` stores it). Defaults to
        RMT-T3.
    image_size (`int`, *optional*, defaults to 448):
        Side of the input the model was trained at (the image processor's crop). Other sizes work at call time.
    patch_size (`int`, *optional*, defaults to 16):
        Side of a warped cell in pixels: the warped image has `h / patch_size` row bands and `w / patch_size` column
        bands.
    num_channels (`int`, *optional*, defaults to 3):
        Number of input channels (the backbone's too).
    downscale_factor (`int`, *optional*, defaults to 2):
        Input side over warped side when `output_size` is not given (448 -> 224 for darmt-L6); the input's sides must
        then be multiples of `patch_size * downscale_factor`.
    output_size (`int` or `list[int]`, *optional*):
        A fixed warped size `(height, width)` (multiples of `patch_size`), for any input size.
    score_grid_size (`int`, *optional*, defaults to 14):
        Side of the score map.
    score_grid_per_cell (`bool`, *optional*, defaults to `False`):
        A score map of one cell per warped cell instead (`h / patch_size x w / patch_size`), which follows the
        input's size and shape, as the authors' segmentation reshaper (`H / 16 x W / 16`); `score_grid_size` then
        only sizes the scorer's construction. Heads v1 and v2 only.
    scorer (`str`, *optional*, defaults to `"learned"`):
        `"learned"` (trunk + head) or `"uniform"` (no weights: the warp is the uniform grid, a plain resize of the
        input read every `downscale_factor` pixels).
    scorer_trunk (`str`, *optional*, defaults to `"efficientnet_b0"`):
        The scorer's trunk, one of the trunk table's (`"efficientnet_b0"` in torchvision's layout for darmt-L6,
        `"mobilenet_v3_small"`, `"mobilenet_v3_large"`, `"efficientnet_lite0"`).
    scorer_head (`str`, *optional*, defaults to `"v1"`):
        `"v1"`, `"v2"` or `"saliency"`, as in [`DartConfig`].
    scorer_hidden_size (`int`, *optional*):
        Hidden width of the head's MLP; defaults as in [`DartConfig`] (96 for EfficientNet-B0 with head v1).
    scorer_trunk_depth (`int`, *optional*):
        How many of the trunk's `features` entries the scorer keeps; defaults as in [`DartConfig`] (all 9 of
        EfficientNet-B0 for head v1).
    scorer_max_density_ratio (`float`, *optional*, defaults to 1e4):
        Saliency head: the largest ratio between the scores of two cells.
    scorer_temperature (`float`, *optional*, defaults to 1.5):
        Saliency head: initial value of its learnable temperature.
    freeze_scorer_trunk (`bool`, *optional*, defaults to `True`):
        Keep the trunk frozen (no gradients), as in the original.
    score_normalization (`str`, *optional*, defaults to `"image"`):
        `"image"` standardises each image's scores on its own; `"batch"` over the whole batch, as the original (an
        image's warp then depends on the other images of its batch).
    first_edge_at_one (`bool`, *optional*, defaults to `False`):
        The original's first column edge: one warped pixel in, instead of 0.
    edge_scale_from_first_image (`bool`, *optional*, defaults to `False`):
        The original's edge scale, taken from the batch's first image as a Python number.
    column_sampling (`str`, *optional*, defaults to `"band"`):
        `"band"` samples each row band on its own; `"strip"` samples along the strip of row bands laid end to end with
        zeros past its ends, as the original.
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the truncated normal initialiser of the scorer head's linear layers.
    segmentation_loss_grid (`str`, *optional*, defaults to `"warped"`):
        Semantic segmentation only: where the training loss is computed. `"warped"`: the segmentation model's own
        loss on the warped image against the warped label map, as the authors' code (a warp that shrinks a region
        also shrinks its pixels' weight in the loss). `"input"`: the cross-entropy of the logits warped back to the
        input grid against the labels as given, each input pixel weighing the same whatever the warp (the
        segmentation model's auxiliary losses, such as UperNet's, are then not added).
    """

    model_type = "dart_reshaper"
    # what `Trainer.evaluate/predict` leaves out of the gathered predictions: metrics need only the logits
    keys_to_ignore_at_inference = ["hidden_states", "attentions", "warped_pixel_values", "score_map", "row_edges",
                                   "col_edges", "warped_logits", "warped_labels"]

    def __init__(
        self,
        backbone_config: PreTrainedConfig | dict | None = None,
        image_size: int = 448,
        patch_size: int = 16,
        num_channels: int = 3,
        downscale_factor: int = 2,
        output_size: int | list[int] | None = None,
        score_grid_size: int = 14,
        score_grid_per_cell: bool = False,
        scorer: str = "learned",
        scorer_trunk: str = "efficientnet_b0",
        scorer_head: str = "v1",
        scorer_hidden_size: int | None = None,
        scorer_trunk_depth: int | None = None,
        scorer_max_density_ratio: float = 1e4,
        scorer_temperature: float = 1.5,
        freeze_scorer_trunk: bool = True,
        score_normalization: str = "image",
        first_edge_at_one: bool = False,
        edge_scale_from_first_image: bool = False,
        column_sampling: str = "band",
        initializer_range: float = 0.02,
        segmentation_loss_grid: str = "warped",
        **kwargs,
    ):
        self.backbone_config = resolve_backbone_config(backbone_config)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.downscale_factor = downscale_factor
        self.output_size = list(output_size) if isinstance(output_size, tuple) else output_size
        self.score_grid_size = score_grid_size
        self.score_grid_per_cell = score_grid_per_cell
        self.scorer = scorer
        self.scorer_trunk = scorer_trunk
        self.scorer_head = scorer_head
        if scorer_hidden_size is None and isinstance(scorer_trunk, str) and scorer_trunk in TRUNKS \
                and scorer_head in ("v1", "v2", "saliency"):
            scorer_hidden_size = default_scorer_hidden_size(scorer_trunk, scorer_head)
        self.scorer_hidden_size = scorer_hidden_size
        self.scorer_trunk_depth = scorer_trunk_depth
        self.scorer_max_density_ratio = scorer_max_density_ratio
        self.scorer_temperature = scorer_temperature
        self.freeze_scorer_trunk = freeze_scorer_trunk
        self.score_normalization = score_normalization
        self.first_edge_at_one = first_edge_at_one
        self.edge_scale_from_first_image = edge_scale_from_first_image
        self.column_sampling = column_sampling
        self.initializer_range = initializer_range
        self.segmentation_loss_grid = segmentation_loss_grid
        kwargs.pop("model_type", None)
        # the labels are the backbone's unless given here (then they are set there too, see `__setattr__`)
        if not {"id2label", "label2id", "num_labels"} & set(kwargs) and self.backbone_config.id2label is not None:
            kwargs["id2label"] = dict(self.backbone_config.id2label)
            label2id = self.backbone_config.label2id
            kwargs["label2id"] = dict(label2id) if label2id is not None else {
                label: index for index, label in self.backbone_config.id2label.items()}
        kwargs.setdefault("problem_type", self.backbone_config.problem_type)
        super().__init__(**kwargs)
        self.validate_reshaper()

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in _SHARED_LABEL_FIELDS:
            backbone = self.__dict__.get("backbone_config")
            if isinstance(backbone, PreTrainedConfig):
                setattr(backbone, name, copy.deepcopy(value))

    @classmethod
    def darmt_l6(cls, **overrides) -> DartReshaperConfig:
        """The released darmt-L6: RMT-L6 (`RmtConfig.from_preset("l6")`, 1000 labels) behind the original reshaper
        (EfficientNet-B0 trunk and head v1, 448 -> 224, a 14x14 score grid, `DAIR_PARITY_OPTIONS`); `overrides`
        replace single fields (e.g. `backbone_config=` for another RMT)."""
        fields = {"backbone_config": RmtConfig.from_preset("l6", num_labels=1000), **DAIR_PARITY_OPTIONS}
        fields.update(overrides)
        return cls(**fields)

    def reshaper_kwargs(self) -> dict:
        """The keyword arguments of the [`DartImageReshaper`] this configuration describes."""
        return {
            "scorer": self.scorer, "scorer_trunk": self.scorer_trunk, "scorer_head": self.scorer_head,
            "scorer_hidden_size": self.scorer_hidden_size, "scorer_trunk_depth": self.scorer_trunk_depth,
            "scorer_max_density_ratio": self.scorer_max_density_ratio, "scorer_temperature": self.scorer_temperature,
            "freeze_scorer_trunk": self.freeze_scorer_trunk, "score_grid_size": self.score_grid_size,
            "score_grid_per_cell": self.score_grid_per_cell,
            "patch_size": self.patch_size, "num_channels": self.num_channels,
            "downscale_factor": self.downscale_factor,
            "output_size": None if self.output_size is None else (
                self.output_size if isinstance(self.output_size, int) else tuple(self.output_size)),
            "score_normalization": self.score_normalization, "first_edge_at_one": self.first_edge_at_one,
            "edge_scale_from_first_image": self.edge_scale_from_first_image, "column_sampling": self.column_sampling,
        }

    def validate_reshaper(self) -> None:
        """Check every field and the relations between them; raise a `ValueError` / `TypeError` naming the field."""
        name = type(self).__name__
        for field, allowed in (("scorer", _SCORERS), ("score_normalization", _NORMALIZATIONS),
                               ("column_sampling", _COLUMN_SAMPLINGS),
                               ("segmentation_loss_grid", _SEGMENTATION_LOSS_GRIDS)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"{name}: `{field}` must be one of {allowed}, got {getattr(self, field)!r}.")
        for field in ("first_edge_at_one", "edge_scale_from_first_image", "freeze_scorer_trunk", "score_grid_per_cell"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"{name}: `{field}` must be a bool (True or False), got {getattr(self, field)!r}.")
        for field in ("image_size", "patch_size", "num_channels", "downscale_factor", "score_grid_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: `{field}` must be a positive integer, got {value!r}.")
        sides = [self.output_size] * 2 if isinstance(self.output_size, int) else self.output_size
        if sides is not None and (
            not isinstance(sides, list) or len(sides) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % self.patch_size for s in sides)
        ):
            raise ValueError(f"{name}: `output_size` must be None, an int or a pair of ints, positive multiples of "
                             f"`patch_size` ({self.patch_size}), got {self.output_size!r}.")
        if self.score_grid_per_cell and self.scorer == "learned" and self.scorer_head == "saliency":
            raise ValueError(f"{name}: `score_grid_per_cell` needs a v1 or v2 `scorer_head`: the saliency head runs "
                             "on a fixed score grid.")
        step = self.patch_size * self.downscale_factor
        if sides is None and self.image_size % step:
            raise ValueError(f"{name}: `image_size` ({self.image_size}) must be a multiple of patch_size * "
                             f"downscale_factor = {step} (or give `output_size`).")
        backbone_channels = getattr(self.backbone_config, "num_channels", self.num_channels)
        if backbone_channels != self.num_channels:
            raise ValueError(f"{name}: `num_channels` ({self.num_channels}) differs from the backbone's "
                             f"`backbone_config.num_channels` ({backbone_channels}).")
        # the scorer fields are the token form's: its configuration checks them (no model is built)
        try:
            DartConfig(image_size=self.score_grid_size * step, patch_size=self.patch_size,
                       num_channels=self.num_channels, score_grid_size=self.score_grid_size,
                       num_tokens=self.score_grid_size**2, scorer=self.scorer, scorer_trunk=self.scorer_trunk,
                       scorer_head=self.scorer_head, scorer_hidden_size=self.scorer_hidden_size,
                       scorer_trunk_depth=self.scorer_trunk_depth,
                       scorer_max_density_ratio=self.scorer_max_density_ratio,
                       scorer_temperature=self.scorer_temperature, freeze_scorer_trunk=self.freeze_scorer_trunk,
                       initializer_range=self.initializer_range)
        except (ValueError, TypeError) as error:
            raise type(error)(str(error).replace("DartConfig:", f"{name}:", 1)) from None


__all__ = ["DartReshaperConfig", "DAIR_PARITY_OPTIONS", "is_image_classifier_config", "is_semantic_segmentation_config",
           "resolve_backbone_config"]
