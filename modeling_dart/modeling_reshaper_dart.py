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
"""PyTorch DART reshaper models: DART's image reshaper in front of any image classifier (DART's second form; the
released darmt-L6 is RMT-L6 behind it) or any semantic segmentation model (the authors' segmentation fork: warp the
image, segment the warped image, warp the logits back)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput, auto_docstring
from transformers.utils.generic import can_return_tuple

from .configuration_reshaper_dart import (
    DartReshaperConfig,
    is_image_classifier_config,
    is_semantic_segmentation_config,
)
from .embeddings_dart import check_pixel_values
from .modeling_dart import DART_LABELS_ARG, DartPreTrainedModel, _mark_trunk, check_classification_labels
from .modeling_rmt import RmtBackbone, RmtForImageClassification
from .reshaper_dart import DartImageReshaper, unwarp, warp_labels

# Classifiers this package defines, by model type: built directly, so that a folder's remote code builds them where
# the package is not installed (the Auto classes do not know them there).
LOCAL_CLASSIFIERS = {"rmt": RmtForImageClassification}


def build_image_classifier(config):
    """The image classifier of a backbone configuration: this package's for its own model types (RMT), else
    `AutoModelForImageClassification.from_config`."""
    if not is_image_classifier_config(config):
        raise ValueError(f"`backbone_config` must configure an image classifier, got {type(config).__name__} "
                         f"(model_type {getattr(config, 'model_type', None)!r}).")
    local = LOCAL_CLASSIFIERS.get(config.model_type)
    if local is not None:
        return local._from_config(config)
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_config(config)


@auto_docstring(
    custom_intro="Output of [`DartReshaperForImageClassification`]: the logits, the loss and the warp (the warped "
    "image, its row and column edges in input pixels and the score map), from which a visualiser draws the warped "
    "grid on the input and the warped image beside it.",
    custom_args=r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        Classification (or regression) loss.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The backbone's hidden states, as the backbone returns them.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        The backbone's attention maps, where it has any.
    warped_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, h, w)`):
        The warped image that the backbone classified (`h = num_rows * patch_size`, `w = num_cols * patch_size`).
    score_map (`torch.FloatTensor` of shape `(batch_size, score_grid_size, score_grid_size)`):
        The scorer's map that placed the rows and columns.
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_rows + 1)`):
        Warped row band `i` reads input rows `[row_edges[i], row_edges[i + 1])`, in input pixels.
    col_edges (`torch.FloatTensor` of shape `(batch_size, num_cols + 1)`):
        Warped column band `j` reads input columns `[col_edges[j], col_edges[j + 1])`, in input pixels.
""",
)
@dataclass
class DartReshaperImageClassifierOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    warped_pixel_values: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    col_edges: torch.FloatTensor | None = None


@auto_docstring(custom_intro="Base class of the DART reshaper models: the DART initialisation of the reshaper's "
                "scorer (the backbone initialises itself).")
class DartReshaperPreTrainedModel(DartPreTrainedModel):
    config_class = DartReshaperConfig
    config: DartReshaperConfig
    base_model_prefix = "dart_reshaper"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _no_split_modules = ["DartImageReshaper"]
    _can_record_outputs = {}  # the backbone records its own hidden states
    # the scorer stays float32 in a half-precision model: its rounding would move the warp (DartScorer._apply)
    _keep_in_fp32_modules_strict = ["reshaper.scorer"]
    _remote_auto_map = {
        "AutoConfig": "configuration_reshaper_dart.DartReshaperConfig",
        "AutoModelForImageClassification": "modeling_reshaper_dart.DartReshaperForImageClassification",
    }


DART_RESHAPER_CALL_ARGS = r"""
    pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Normalised pixels (see [`DartImageProcessor`]; 448x448 for darmt-L6). Sides multiples of `patch_size *
        downscale_factor`, or any size with `output_size`.
    output_size (`int` or `tuple[int, int]`, *optional*):
        The warped size for this call (multiples of `patch_size`); defaults to `config.output_size`, else the input's
        size divided by `config.downscale_factor`.
    score_normalization (`str`, *optional*):
        `"image"` or `"batch"`; overrides `config.score_normalization` for this call.
    score_map (`torch.FloatTensor` of shape `(batch_size, score_grid_size, score_grid_size)`, *optional*):
        Finite non-negative scores that place the warp instead of the scorer's (the scorer does not run); an all-zero
        map gives the plain resize. Gradients flow into it.
"""


@auto_docstring(custom_intro="DART's image reshaper in front of an image classifier: the reshaper warps the input "
                "(rows and columns from the quantiles of the score map's marginals, every cell resampled to "
                "`patch_size` pixels), and the classifier built from `config.backbone_config` (RMT, ConvNeXt, Swin, "
                "ResNet, ...) classifies the warped image.")
class DartReshaperForImageClassification(DartReshaperPreTrainedModel):

    def __init__(self, config: DartReshaperConfig):
        if getattr(config, "model_type", None) != DartReshaperConfig.model_type or not hasattr(config, "reshaper_kwargs"):
            raise TypeError(f"DartReshaperForImageClassification takes a `DartReshaperConfig`, got `config` of type "
                            f"{type(config).__name__}.")
        config.validate_reshaper()
        super().__init__(config)
        self.num_labels = config.num_labels
        self.reshaper = DartImageReshaper(**config.reshaper_kwargs())
        self.backbone = build_image_classifier(config.backbone_config)
        _mark_trunk(self)
        self.post_init()

    @can_return_tuple
    @auto_docstring(custom_args=DART_RESHAPER_CALL_ARGS + DART_LABELS_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_size: int | tuple[int, int] | None = None,
        score_normalization: str | None = None,
        score_map: torch.FloatTensor | None = None,
        **kwargs,
    ) -> DartReshaperImageClassifierOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values` of shape (batch, channels, height, width).")
        warp = self.reshaper(pixel_values, output_size=output_size, score_map=score_map,
                             score_normalization=score_normalization)
        warped = warp.warped_pixel_values.to(self.backbone.dtype)
        outputs = self.backbone(pixel_values=warped, return_dict=True, **kwargs)
        logits = outputs.logits
        loss = None
        if labels is not None:
            labels, problem_type = check_classification_labels(labels, logits, self.config)
            self.config.problem_type = problem_type
            loss = self.loss_function(labels.to(logits.device), logits, self.config)
        return DartReshaperImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            warped_pixel_values=warp.warped_pixel_values,
            score_map=warp.score_map,
            row_edges=warp.row_edges,
            col_edges=warp.col_edges,
        )


# ------------------------------------------------------------------------------------------------ segmentation
# Backbones this package defines, by model type: registered with `AutoBackbone` before a segmentation model that nests
# them is built, so that a folder's remote code builds UperNet with RMT where the package is not installed.
LOCAL_BACKBONES = {"rmt": RmtBackbone}

# the label that segmentation losses skip, where the segmentation model's configuration does not name its own
DEFAULT_IGNORE_INDEX = 255


def build_semantic_segmenter(config):
    """The semantic segmentation model of a configuration (`AutoModelForSemanticSegmentation.from_config`): UperNet
    with a Swin, ConvNeXt or RMT backbone, Segformer, BEiT, ..."""
    if not is_semantic_segmentation_config(config):
        raise ValueError(f"`backbone_config` must configure a semantic segmentation model (a model type with an "
                         f"`AutoModelForSemanticSegmentation` class, e.g. 'upernet', 'segformer'), got "
                         f"{type(config).__name__} (model_type {getattr(config, 'model_type', None)!r}).")
    from transformers import AutoBackbone, AutoModelForSemanticSegmentation

    nested = getattr(config, "backbone_config", None)
    local = LOCAL_BACKBONES.get(getattr(nested, "model_type", None))
    if local is not None:
        AutoBackbone.register(type(nested), local, exist_ok=True)
    return AutoModelForSemanticSegmentation.from_config(config)


def segmentation_ignore_index(config) -> int:
    """The label a segmentation model's loss ignores: UperNet's `loss_ignore_index`, Segformer's / BEiT's
    `semantic_loss_ignore_index`, else 255."""
    for name in ("loss_ignore_index", "semantic_loss_ignore_index"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT_IGNORE_INDEX


def check_segmentation_labels(labels, pixel_values: torch.Tensor, num_labels: int, ignore_index: int) -> None:
    """Validate a batch of label maps for `pixel_values`; raise a `TypeError` / `ValueError` naming `labels`.

    `labels` is an integer tensor of shape `(batch, height, width)`, the size of `pixel_values` (one class id per
    input pixel), holding class ids in `[0, num_labels)` or `ignore_index`. The value check is skipped under
    `torch.compile` / export (it branches on the data); the dtype and shape checks stay.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor of class ids, got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`labels` must hold integer class ids (e.g. torch.long), got {labels.dtype}.")
    batch, _, height, width = pixel_values.shape
    if tuple(labels.shape) != (batch, height, width):
        hint = " (drop the channel dimension)" if labels.dim() == 4 and labels.shape[1] == 1 else ""
        raise ValueError(f"`labels` must have shape (batch, height, width) = ({batch}, {height}, {width}), one class "
                         f"id per pixel of `pixel_values`, got {tuple(labels.shape)}{hint}.")
    if torch.compiler.is_compiling():
        return
    bad = labels[(labels != ignore_index) & ((labels < 0) | (labels >= num_labels))]
    if bad.numel():
        raise ValueError(f"`labels` must be class ids in [0, {num_labels}) or {ignore_index} (ignored), got "
                         f"{bad[0].item()} ({bad.numel()} pixels out of range).")


@auto_docstring(
    custom_intro="Output of [`DartReshaperForSemanticSegmentation`]: the loss, the logits warped "
    "back to the input grid, and the warp (the warped image, the segmentation model's own logits on it, the warped "
    "labels, the row and column edges in input pixels and the score map).",
    custom_args=r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        The segmentation model's loss (UperNet's: cross-entropy plus the auxiliary head's), on the warped image
        against the warped labels, pixels of the ignore index skipped; with `segmentation_loss_grid="input"`, the
        cross-entropy of `logits` against `labels` on the input grid instead.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels, height, width)`):
        Classification scores of every input pixel (before softmax), at the input's resolution: the segmentation
        model's logits warped back by the inverse of the warp.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        The segmentation model's hidden states, as it returns them.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True`):
        The segmentation model's attention maps, where it has any.
    warped_logits (`torch.FloatTensor` of shape `(batch_size, num_labels, h', w')`):
        The segmentation model's logits on the warped image, at the size it returns them (UperNet: the warped
        image's; Segformer: a quarter of it).
    warped_labels (`torch.LongTensor` of shape `(batch_size, h, w)`, *optional*, returned when `labels` is given):
        The labels warped as the image (nearest sampling), which the loss compares with.
    warped_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, h, w)`):
        The warped image that the segmentation model took (`h = num_rows * patch_size`, `w = num_cols * patch_size`).
    score_map (`torch.FloatTensor` of shape `(batch_size, score_grid_size, score_grid_size)`):
        The scorer's map that placed the rows and columns.
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_rows + 1)`):
        Warped row band `i` reads input rows `[row_edges[i], row_edges[i + 1])`, in input pixels.
    col_edges (`torch.FloatTensor` of shape `(batch_size, num_cols + 1)`):
        Warped column band `j` reads input columns `[col_edges[j], col_edges[j + 1])`, in input pixels.
""",
)
@dataclass
class DartReshaperSemanticSegmenterOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    warped_logits: torch.FloatTensor | None = None
    warped_labels: torch.LongTensor | None = None
    warped_pixel_values: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    col_edges: torch.FloatTensor | None = None


DART_SEGMENTATION_LABELS_ARG = r"""
    labels (`torch.LongTensor` of shape `(batch_size, height, width)`, *optional*):
        One class id per input pixel, in `[0, num_labels)`, or the segmentation model's ignore index (255 unless its
        configuration says otherwise) for pixels without a label. They are warped as the image (nearest sampling in
        both directions, so ignored pixels stay ignored) and the loss compares them with the segmentation model's
        logits on the warped grid. Checked by [`check_segmentation_labels`].
"""


@auto_docstring(custom_intro="DART's image reshaper in front of a semantic segmentation model: the reshaper warps "
                "the input (rows and columns from the quantiles of the score map's marginals), the model built from "
                "`config.backbone_config` (UperNet with a Swin, ConvNeXt or RMT backbone, Segformer, ...) segments "
                "the warped image, and its logits are warped back to the input grid by the inverse of the warp. "
                "Labels are warped as the image for the loss, which is computed on the warped grid.")
class DartReshaperForSemanticSegmentation(DartReshaperPreTrainedModel):
    _remote_auto_map = {
        "AutoConfig": "configuration_reshaper_dart.DartReshaperConfig",
        "AutoModelForSemanticSegmentation": "modeling_reshaper_dart.DartReshaperForSemanticSegmentation",
    }

    def __init__(self, config: DartReshaperConfig):
        if getattr(config, "model_type", None) != DartReshaperConfig.model_type or not hasattr(config, "reshaper_kwargs"):
            raise TypeError(f"DartReshaperForSemanticSegmentation takes a `DartReshaperConfig`, got `config` of type "
                            f"{type(config).__name__}.")
        config.validate_reshaper()
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ignore_index = segmentation_ignore_index(config.backbone_config)
        self.reshaper = DartImageReshaper(**config.reshaper_kwargs())
        self.backbone = build_semantic_segmenter(config.backbone_config)
        _mark_trunk(self)
        self.post_init()

    @can_return_tuple
    @auto_docstring(custom_args=DART_RESHAPER_CALL_ARGS + DART_SEGMENTATION_LABELS_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        output_size: int | tuple[int, int] | None = None,
        score_normalization: str | None = None,
        score_map: torch.FloatTensor | None = None,
        **kwargs,
    ) -> DartReshaperSemanticSegmenterOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values` of shape (batch, channels, height, width).")
        if labels is not None:  # before the scorer runs
            check_pixel_values(pixel_values, self.config.num_channels, 1)
            check_segmentation_labels(labels, pixel_values, self.config.num_labels, self.ignore_index)
        warp = self.reshaper(pixel_values, output_size=output_size, score_map=score_map,
                             score_normalization=score_normalization)
        warped_labels = None
        if labels is not None:
            num_cols = warp.col_edges.shape[1] - 1
            warped_labels = warp_labels(labels.to(warp.row_edges.device), warp.row_edges, warp.strip_edges,
                                        num_cols, self.reshaper.patch_size).long()
        warped = warp.warped_pixel_values.to(self.backbone.dtype)
        loss_on_input = self.config.segmentation_loss_grid == "input"
        outputs = self.backbone(pixel_values=warped, labels=None if loss_on_input else warped_labels, return_dict=True,
                                **kwargs)
        height, width = pixel_values.shape[-2:]
        logits = unwarp(outputs.logits, warp.row_edges, warp.col_edges, self.reshaper.patch_size, height, width)
        loss = outputs.get("loss")
        if loss_on_input and labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.to(logits.device).long(),
                                                     ignore_index=self.ignore_index)
        return DartReshaperSemanticSegmenterOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
            warped_logits=outputs.logits,
            warped_labels=warped_labels,
            warped_pixel_values=warp.warped_pixel_values,
            score_map=warp.score_map,
            row_edges=warp.row_edges,
            col_edges=warp.col_edges,
        )


__all__ = [
    "DartReshaperPreTrainedModel",
    "DartReshaperForImageClassification",
    "DartReshaperForSemanticSegmentation",
    "DartReshaperImageClassifierOutput",
    "DartReshaperSemanticSegmenterOutput",
    "build_image_classifier",
    "build_semantic_segmenter",
    "check_segmentation_labels",
    "segmentation_ignore_index",
]
