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
"""Layers and checks shared by the backbones of the package (remote code: imports only torch)."""

from __future__ import annotations

import torch
from torch import nn


class DartDropPath(nn.Module):
    """Stochastic depth on a residual branch, for every backbone of the package (DeiT layers, Mamba blocks, RMT
    blocks): in training, zeroes whole samples with probability `drop_prob` and rescales the others by
    `1 / (1 - drop_prob)`; identity in eval mode or when `drop_prob == 0`."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
        mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def check_classification_labels(labels, logits: torch.Tensor, config) -> tuple[torch.Tensor, str]:
    """Validate `labels` for classification `logits` `(batch, num_labels)`; return them in the loss's dtype and the
    problem type.

    The problem type is `config.problem_type`, or inferred as Transformers' classifiers do (one label: regression;
    integer labels: single-label; float labels: multi-label). The caller stores an inferred type in the config only
    after the labels passed, so a wrong first call does not change how later calls are read.

    - single-label: integer class indices `(batch,)` in `[0, num_labels)`, or -100 (ignored);
    - multi-label: `(batch, num_labels)` targets in `[0, 1]`;
    - regression: `(batch,)` or `(batch, 1)` with one label, `(batch, num_labels)` otherwise.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`labels` must be a torch.Tensor, got {type(labels).__name__}.")
    batch, num_labels = logits.shape
    problem_type = config.problem_type
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif not labels.is_floating_point() and labels.dtype != torch.bool:
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    elif problem_type not in _PROBLEM_TYPES:
        raise ValueError(f"`config.problem_type` must be one of {_PROBLEM_TYPES} or None, got {problem_type!r}.")
    if labels.dim() == 0 or labels.shape[0] != batch:
        raise ValueError(f"`labels` must have one entry per image (batch size {batch}), got shape {tuple(labels.shape)}.")
    if labels.is_complex():
        raise TypeError(f"`labels` must be real numbers, got {labels.dtype}.")
    if problem_type == "single_label_classification":
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(
                f"`labels` for single-label classification must be integer class indices, got {labels.dtype} (float "
                f"labels of shape (batch, num_labels) mean multi-label classification)."
            )
        if labels.dim() != 1:
            raise ValueError(f"`labels` for single-label classification must have shape ({batch},), got "
                             f"{tuple(labels.shape)}.")
        if torch.compiler.is_compiling():  # the value checks branch on the data: traced graphs keep the shape checks
            return labels.long(), problem_type
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_labels))]
        if bad.numel():
            raise ValueError(f"`labels` must be class indices in [0, {num_labels}) (or -100 to ignore), got "
                             f"{bad[0].item()}.")
        return labels.long(), problem_type
    expected = (batch,) if problem_type == "regression" and num_labels == 1 else (batch, num_labels)
    if tuple(labels.shape) != expected and not (num_labels == 1 and tuple(labels.shape) == (batch, 1)):
        raise ValueError(f"`labels` for {problem_type.replace('_', ' ')} must have shape {expected}, got "
                         f"{tuple(labels.shape)}.")
    labels = labels.to(logits.dtype)
    if torch.compiler.is_compiling():
        return labels, problem_type
    if not torch.isfinite(labels).all():
        raise ValueError("`labels` must be finite.")
    if problem_type == "multi_label_classification" and ((labels < 0) | (labels > 1)).any():
        raise ValueError("`labels` for multi-label classification must be targets in [0, 1].")
    return labels, problem_type


__all__ = ["DartDropPath", "check_classification_labels"]
