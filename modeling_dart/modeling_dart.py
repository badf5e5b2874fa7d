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
"""PyTorch DART models: adaptive-region tokens feeding a DeiT (ViT) or Vision Mamba backbone."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.modeling_outputs import BaseModelOutput
from transformers.utils import ModelOutput, auto_docstring
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_dart import DartConfig
from .embeddings_dart import DartEmbeddings, DartEmbeddingsOutput, DartTokenGeometryEmbedding
from .layers_dart import DartDropPath, check_classification_labels
from .mamba_dart import DartBiMambaMixer, DartMambaAddNorm, DartMambaBlock, DartRMSNorm
from .partition_dart import score_density
from .scorer_dart import DartSaliencyHead, DartScorer
from .self_distillation_dart import MilEvidenceHead, density_distillation_loss, resample_mass
from .trunk_tables_dart import TRUNKS


# ------------------------------------------------------------------------------------------------------- outputs
# the token geometry that every DART output carries (the visualiser draws from it)
DART_GEOMETRY_FIELDS = r"""
    regions (`torch.FloatTensor` of shape `(batch_size, num_tokens, 4)`):
        Source box `(x0, y0, x1, y1)` of each patch token in input pixels (a token that straddles two rows reports
        its widest piece).
    score_map (`torch.FloatTensor` of shape `(batch_size, score_grid_size, score_grid_size)`):
        The scorer's map that placed the tokens.
    token_edges (`torch.FloatTensor` of shape `(batch_size, num_tokens + 1)`):
        Token boundaries along the concatenated strip of token rows, in strip pixels.
    row_edges (`torch.FloatTensor` of shape `(batch_size, num_rows + 1)`):
        Token-row boundaries in input pixels.
"""

DART_MODEL_OUTPUT_FIELDS = r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_tokens + 1, hidden_size)`):
        Final (normalised) hidden states, cls token included at `cls_token_index`.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Final hidden state of the cls token.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        Embedding output plus the output of each layer, each `(batch_size, num_tokens + 1, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True` with eager attention):
        Per layer `(batch_size, num_heads, num_tokens + 1, num_tokens + 1)`.
    cls_token_index (`int`):
        Position of the cls token in the sequence.
    scorer_features (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*, returned when `return_scorer_features=True` with a learned scorer):
        The scorer trunk's features from the pass that placed the tokens.
"""
DART_CLASSIFIER_OUTPUT_FIELDS = r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is given):
        Classification (or regression) loss.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Classification scores (before softmax).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned when `output_hidden_states=True`):
        As in [`DartModelOutput`].
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned when `output_attentions=True` with eager attention):
        As in [`DartModelOutput`].
"""


@auto_docstring(custom_intro="Output of [`DartModel`]: the final hidden states and the token geometry.",
                custom_args=DART_MODEL_OUTPUT_FIELDS + DART_GEOMETRY_FIELDS)
@dataclass
class DartModelOutput(ModelOutput):
    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    regions: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    token_edges: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    cls_token_index: int | None = None
    scorer_features: torch.FloatTensor | None = None


@auto_docstring(
    custom_intro="Output of [`DartForImageClassification`]: the logits, the loss and the token geometry.",
    custom_args=DART_CLASSIFIER_OUTPUT_FIELDS + DART_GEOMETRY_FIELDS + r"""
    evidence_loss (`torch.FloatTensor` of shape `()`, *optional*, returned in training with `labels` when `config.scorer_evidence_weight > 0` or `config.scorer_head == "mil"`):
        The part of `loss` that the evidence head adds (its own loss and the scorer's KL term; for the mil scorer
        head, that head's own classification loss), for a caller that replaces the classification loss with its own
        (label smoothing, mixup) and keeps this part.
""",
)
@dataclass
class DartImageClassifierOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    regions: torch.FloatTensor | None = None
    score_map: torch.FloatTensor | None = None
    token_edges: torch.FloatTensor | None = None
    row_edges: torch.FloatTensor | None = None
    evidence_loss: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------- ViT parts
def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
):
    """Plain softmax attention on `(batch, heads, seq, head_dim)` tensors; returns `(batch, seq, heads, head_dim)`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class DartSelfAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection (as in DeiT) and an output `proj`."""

    def __init__(self, config: DartConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.dropout = config.attention_probs_dropout_prob
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = interface(
            self, query, key, value, None, dropout=self.dropout if self.training else 0.0, scaling=self.scaling, **kwargs
        )
        return self.proj(output.reshape(batch, length, -1)), weights


class DartMLP(nn.Module):
    def __init__(self, config: DartConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class DartLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block of DeiT: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`, with stochastic depth."""

    def __init__(self, config: DartConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DartSelfAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DartMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DartDropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        attended, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(attended))
        mlp_out = self.mlp(self.layernorm_after(hidden_states))
        return hidden_states + self.drop_path(self.dropout(mlp_out))


def _drop_path_rates(config: DartConfig) -> list[float]:
    # CODEPATH: a one-layer stack (tiny test models only) takes the whole rate; every released model rises from 0
    if config.num_hidden_layers == 1:
        return [config.drop_path_rate]
    step = config.drop_path_rate / (config.num_hidden_layers - 1)
    return [step * i for i in range(config.num_hidden_layers)]


class DartViTEncoder(nn.Module):
    """Stack of [`DartLayer`] followed by the final LayerNorm. The per-layer hidden states and attention maps are
    recorded by hooks (`DartPreTrainedModel._can_record_outputs`), not threaded through here."""

    def __init__(self, config: DartConfig):
        super().__init__()
        self.layer = nn.ModuleList([DartLayer(config, rate) for rate in _drop_path_rates(config)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> BaseModelOutput:
        for layer in self.layer:
            hidden_states = layer(hidden_states, **kwargs)
        return BaseModelOutput(last_hidden_state=self.layernorm(hidden_states))


class DartMambaEncoder(nn.Module):
    """Stack of bidirectional Mamba blocks with a float32 residual stream, then a final `add + RMSNorm` (`norm_f`).

    Hidden states are recorded by hooks, but not on the blocks' main output: a block returns `(mixer output,
    residual)` and the hidden state after a layer is their SUM (the residual stream), which no module returns. The
    stream after layer `i` is the residual that block `i + 1` forms at its start (its second output), and after the
    last layer the one `norm_f` forms; so the recorders take every block's residual output (the first one is the
    embeddings) and `norm_f`'s (see `DartPreTrainedModel._can_record_outputs`).
    """

    def __init__(self, config: DartConfig):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.layers = nn.ModuleList(
            [
                DartMambaBlock(
                    config.hidden_size,
                    state_size=config.state_size,
                    conv_kernel=config.conv_kernel,
                    expand=config.expand,
                    time_step_rank=config.time_step_rank,
                    use_conv_bias=config.use_conv_bias,
                    use_bias=config.use_bias,
                    divide_out=config.bidirectional_divide_out,
                    use_kernels=config.use_mamba_kernels,
                    layer_norm_epsilon=config.layer_norm_epsilon,
                    residual_in_fp32=config.residual_in_fp32,
                    drop_path=rate,
                    layer_idx=i,
                )
                for i, rate in enumerate(_drop_path_rates(config))
            ]
        )
        self.norm_f = DartMambaAddNorm(config.hidden_size, config.layer_norm_epsilon, config.residual_in_fp32)
        self.gradient_checkpointing = False
        for mixer in self.modules():  # the mixers initialise their own projections (Mamba's dt/A/D scheme)
            if isinstance(mixer, DartBiMambaMixer):
                for sub in mixer.modules():
                    sub._dart_mamba = True

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> BaseModelOutput:
        residual = None
        for block in self.layers:
            hidden_states, residual = block(hidden_states, residual)
        normalized, _ = self.norm_f(hidden_states, residual)
        return BaseModelOutput(last_hidden_state=normalized)


# --------------------------------------------------------------------------------------------------- base model
_MISSING = object()


def _dart_class(cls: type) -> type:
    """`cls`, or the DART model class it wraps: the first class of its MRO defined in this package."""
    package = __name__.rpartition(".")[0]
    for candidate in cls.__mro__:
        if candidate.__module__.rpartition(".")[0] == package and issubclass(candidate, PreTrainedModel):
            return candidate
    return cls


@auto_docstring
class DartPreTrainedModel(PreTrainedModel):
    config_class = DartConfig
    config: DartConfig
    base_model_prefix = "dart"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DartPatchProjection", "DartEmbeddings", "DartLayer", "DartMambaBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True
    # the scorer stays float32 in a half-precision model: its rounding would move the token regions (DartScorer._apply)
    _keep_in_fp32_modules_strict = ["embeddings.scorer"]
    # Transformers' output recording (`capture_outputs` on the base model's forward): hooks collect the hidden states
    # and attention maps. DeiT: each layer's output (the embeddings first) and each attention's weights (eager
    # attention only). Mamba: the residual stream, taken from the blocks' and `norm_f`'s residual outputs (see
    # `DartMambaEncoder`); a Mamba backbone has no attention maps (an empty tuple when asked for).
    _can_record_outputs = {
        "hidden_states": [
            OutputRecorder(DartLayer, index=0),
            OutputRecorder(DartMambaBlock, index=1, capture_initial_hidden_state=False),
            OutputRecorder(DartMambaAddNorm, index=1, layer_name="norm_f", capture_initial_hidden_state=False),
        ],
        "attentions": OutputRecorder(DartSelfAttention, index=1),
    }
    # Auto classes recorded in a saved folder's `auto_map` besides the saving class's own, so that the folder loads
    # with `trust_remote_code=True` through any of them where this package is not installed.
    _remote_auto_map = {
        "AutoConfig": "configuration_dart.DartConfig",
        "AutoModel": "modeling_dart.DartModel",
        "AutoModelForImageClassification": "modeling_dart.DartForImageClassification",
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        for auto_class, reference in self._remote_auto_map.items():
            auto_map.setdefault(auto_class, reference)
        self.config.auto_map = auto_map
        model_class = _dart_class(type(self))
        if model_class is type(self) or self._auto_class is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        # FSDP2's `fully_shard` gives a sharded model a class of its own, defined in torch (`FSDPDart...`): saved as
        # is, the folder's remote code was torch's FSDP files and its `auto_map` named that class. The code and the
        # `auto_map` entry are those of the DART class it wraps.
        if kwargs.get("is_main_process", True):
            os.makedirs(save_directory, exist_ok=True)
            custom_object_save(model_class.__new__(model_class), save_directory, config=self.config)
        wrapper = type(self)  # FSDP's wrapper class: no second, wrong copy by the base method
        own = wrapper.__dict__.get("_auto_class", _MISSING)
        wrapper._auto_class = None
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if own is _MISSING:
                del wrapper._auto_class
            else:
                wrapper._auto_class = own

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; a frozen scorer trunk stays frozen (`requires_grad=False`).

        Loading puts fresh parameters in place, which would otherwise hand the frozen trunk to the optimizer.
        """
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` gives a tuple
        for module in model.modules():
            if isinstance(module, DartScorer) and module.freeze_trunk:
                module.features.requires_grad_(False)
        return loaded

    # Every module type of the model is initialised here (the trunk's He scheme, the Mamba mixers' own dt/A/D
    # scheme, the zero-initialised geometry and saliency corrections); the base method's defaults would draw a
    # second, different initialisation first. trf-ignore: TRF018
    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise every parameter and buffer of `module` (Transformers calls this for each module not loaded)."""
        std = self.config.initializer_range
        if isinstance(module, DartBiMambaMixer):
            module._init_mamba_weights()
        elif getattr(module, "_dart_mamba", False):
            return
        elif isinstance(module, DartSaliencyHead):  # starts as the trunk's feature saliency: correction zero
            init.ones_(module.prior_weight)
            init.trunc_normal_(module.fc1.weight, std=std)
            init.zeros_(module.fc1.bias)
            init.zeros_(module.fc2.weight)
            init.zeros_(module.fc2.bias)
        elif isinstance(module, nn.Linear):
            if _inside_saliency_head(module):
                return  # set with its head above
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d) and not _inside_trunk(module):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # trunk: He initialisation (fan-in, counted per group: `in / groups * k * k`), which keeps the forward
            # signal's scale. PyTorch's `kaiming_normal_(mode="fan_out")` (torchvision's choice, fine for a trunk whose
            # BatchNorms train) counts a depthwise weight's fan-out as `out * k * k`: with frozen identity BatchNorms a
            # random trunk's features then shrank to ~1e-8 at the original depths, and its score map was noise
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):  # the statistics are buffers: set them too
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, DartRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, DartScorer) and module.version == "saliency":
            init.constant_(module.log_temperature, math.log(self.config.scorer_temperature))
        elif isinstance(module, DartTokenGeometryEmbedding):  # zero: a new model starts as one without it
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DartEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embeddings, std=std)


def _inside_trunk(module: nn.Module) -> bool:
    return getattr(module, "_dart_trunk", False)


def _inside_saliency_head(module: nn.Module) -> bool:
    return getattr(module, "_dart_saliency_head", False)


def _mark_trunk(model: nn.Module) -> None:
    for sub in model.modules():
        if isinstance(sub, DartScorer):
            for conv in sub.features.modules():
                conv._dart_trunk = True
        if isinstance(sub, DartSaliencyHead):
            sub.fc1._dart_saliency_head = sub.fc2._dart_saliency_head = True


# the arguments of both image models' `forward`, documented once
DART_CALL_ARGS = r"""
    pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
        Normalised pixels (see [`DartImageProcessor`]). Any height and width of at least one patch; the released
        models were trained at 448x448.
    num_tokens (`int`, *optional*):
        Number of adaptive tokens for this call (defaults to `config.num_tokens`). One checkpoint serves several
        compute budgets.
    score_normalization (`str`, *optional*):
        `"image"` or `"batch"`; overrides `config.score_normalization` for this call.
"""


DART_SCORER_FEATURES_ARG = r"""
    return_scorer_features (`bool`, *optional*, defaults to `False`):
        Also return the learned scorer trunk's features from the pass that placed the tokens (`scorer_features`;
        no second trunk pass).
"""


@auto_docstring(custom_intro="The bare DART model: adaptive tokens and a DeiT or bidirectional Mamba backbone, no head.")
class DartModel(DartPreTrainedModel):

    def __init__(self, config: DartConfig):
        if config.backbone not in ("vit", "vim"):
            raise ValueError(f"DartModel takes an image backbone ('vit' or 'vim'), got backbone={config.backbone!r}; "
                             "VideoMamba configs (DartVideoConfig) build DartVideoMambaModel.")
        config._validate_dart()
        super().__init__(config)
        self.embeddings = DartEmbeddings(config)
        # CODEPATH: darvit_* checkpoints (DeiT blocks) take "vit", darvim_* (bidirectional Mamba) take "vim"
        if config.backbone == "vit":
            self.encoder = DartViTEncoder(config)
        else:
            self.encoder = DartMambaEncoder(config)
        _mark_trunk(self)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.projection

    @capture_outputs(tie_last_hidden_states=False)  # the last hidden state is the one before the final norm
    @auto_docstring(custom_args=DART_CALL_ARGS + DART_SCORER_FEATURES_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        num_tokens: int | None = None,
        score_normalization: str | None = None,
        return_scorer_features: bool = False,
        **kwargs,
    ) -> DartModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify `pixel_values` of shape (batch, channels, height, width).")
        if score_normalization is not None and score_normalization not in ("image", "batch"):
            raise ValueError(f"`score_normalization` must be 'image' or 'batch', got {score_normalization!r}.")
        if isinstance(pixel_values, torch.Tensor) and pixel_values.is_floating_point():
            pixel_values = pixel_values.to(self.embeddings.projection.weight.dtype)

        emb: DartEmbeddingsOutput = self.embeddings(
            pixel_values, num_tokens=num_tokens, score_normalization=score_normalization,
            return_scorer_features=return_scorer_features,
        )
        sequence = self.encoder(emb.embeddings, **kwargs).last_hidden_state
        return DartModelOutput(
            last_hidden_state=sequence,
            pooler_output=sequence[:, emb.cls_index],
            regions=emb.regions,
            score_map=emb.score_map,
            token_edges=emb.token_edges,
            row_edges=emb.row_edges,
            cls_token_index=emb.cls_index,
            scorer_features=emb.scorer_features,
        )


# the `labels` argument of the image and video classifiers
DART_LABELS_ARG = r"""
    labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
        Labels for the loss: class indices in `[0, num_labels)` (or -100 to ignore), floats for regression
        (`num_labels == 1`) or multi-hot targets `(batch_size, num_labels)` for multi-label classification
        (`problem_type`). Checked by [`check_classification_labels`].
"""

def classify(model: PreTrainedModel, outputs: ModelOutput, labels, output_class: type[ModelOutput]) -> ModelOutput:
    """Shared tail of the image and video classifiers: logits from the pooled cls token, the loss (Transformers'
    `loss_function` for classification, after [`check_classification_labels`]), and every field of the base model's
    output that `output_class` declares (hidden states, regions, score map, edges)."""
    logits = model.classifier(outputs.pooler_output)
    loss = None
    if labels is not None:
        labels, problem_type = check_classification_labels(labels, logits, model.config)
        model.config.problem_type = problem_type
        loss = model.loss_function(labels.to(logits.device), logits, model.config)
    carried = {name: outputs.get(name) for name in output_class.__dataclass_fields__ if name not in ("loss", "logits")}
    return output_class(loss=loss, logits=logits, **carried)


@auto_docstring(custom_intro="DART with a linear classifier on the final cls token (DeiT / Vim style).")
class DartForImageClassification(DartPreTrainedModel):

    def __init__(self, config: DartConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dart = DartModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        # training option (`config.scorer_evidence_weight`): a multiple-instance classifier on the scorer trunk's
        # features whose attention is the scorer density's target; unused in evaluation and inference
        self.evidence_head = None
        # CODEPATH: released checkpoints (darvit_*, darvim_*) have no evidence head (weight 0); new models trained
        # with the recommended scorer (`examples/run_image_classification.py`) take it
        if config.scorer_evidence_weight > 0:
            if config.num_labels < 1:
                raise ValueError(f"`scorer_evidence_weight` needs a classifier (`num_labels` >= 1), got "
                                 f"num_labels={config.num_labels}.")
            channels = TRUNKS[config.scorer_trunk].output_channels(config.resolved_scorer_trunk_depth())
            self.evidence_head = MilEvidenceHead(channels, config.num_labels)
        self.post_init()

    @can_return_tuple
    @auto_docstring(custom_args=DART_CALL_ARGS + DART_LABELS_ARG)
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        num_tokens: int | None = None,
        score_normalization: str | None = None,
        **kwargs,
    ) -> DartImageClassifierOutput | tuple:
        evidence = self.evidence_module() is not None and self.training and labels is not None
        outputs = self.dart(
            pixel_values, num_tokens=num_tokens, score_normalization=score_normalization, return_dict=True,
            return_scorer_features=evidence, **kwargs
        )
        output = classify(self, outputs, labels, DartImageClassifierOutput)
        if evidence:
            output["evidence_loss"] = self.evidence_loss(outputs.scorer_features, outputs.score_map, labels)
            output.loss = output.loss + output.evidence_loss
        return output

    def evidence_module(self) -> MilEvidenceHead | None:
        """The multiple-instance classifier that learns from the labels where the class can be read from: the
        `evidence_head` (`scorer_evidence_weight` > 0), the scorer's own head when it is the mil head, else None."""
        if self.evidence_head is not None:
            return self.evidence_head
        scorer = self.dart.embeddings.scorer
        return scorer.head if scorer is not None and scorer.version == "mil" else None

    def evidence_loss(self, features: torch.Tensor, score_map: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The evidence training term: the evidence module's (`evidence_module`) own classification loss on the
        scorer trunk's `features` `(batch, channels, h, w)` (detached: the head does not train the trunk). With the
        `evidence_head` (`scorer_evidence_weight` > 0) it adds `scorer_evidence_weight * KL(target || pdf)`, the
        target being the head's attention over the feature cells moved onto the score grid with the mass conserved
        (detached: only the scorer learns from it) and the pdf the `score_map` `(batch, grid, grid)` normalised to
        sum 1. The mil scorer head's attention is the score map itself, so its term is its classification loss."""
        head = self.evidence_module()
        if head is None:
            raise ValueError("`evidence_loss` needs an evidence head (`scorer_evidence_weight` > 0) or the mil scorer "
                             "head (`scorer_head='mil'`).")
        logits, attention = head(features.detach().to(head.embed.weight.dtype))
        labels, _ = check_classification_labels(labels, logits, self.config)
        head_loss = self.loss_function(labels.to(logits.device), logits, self.config)
        if self.evidence_head is None:
            return head_loss
        grid = score_map.shape[-1]
        target = resample_mass(attention.detach().float(), grid).flatten(1)
        pdf = score_density(score_map.reshape(score_map.shape[0], -1).float())
        return head_loss + self.config.scorer_evidence_weight * density_distillation_loss(pdf, target.to(pdf.device))

    @classmethod
    def from_pretrained_backbone(cls, source, **options) -> DartForImageClassification:
        """Wrap a pretrained backbone in DART: a Transformers `ViTForImageClassification`, `DeiTForImageClassification`
        or `DeiTForImageClassificationWithTeacher` (folder, Hub id or loaded model), or an original Vim release `.pth`.

        Options (all keyword): `scorer` (`"uniform"` or `"learned"`), `scorer_trunk`, `scorer_head`,
        `scorer_trunk_depth`, `freeze_scorer_trunk`, `scorer_trunk_weights`, `image_size`, `score_grid_size`,
        `num_tokens`, `distillation_head` (`"average"` or `"cls"`), `weights` (`"model"` / `"model_ema"` of a `.pth`),
        and the Hub's `revision` / `token` / `cache_dir`. See `modeling_dart.from_backbone` for what maps where; the
        conversion report is in `model.conversion_report`. Needs the `modeling_dart` package (remote code alone does
        not carry the converter).
        """
        try:  # absolute import: a folder's remote code neither copies nor requires the converter
            from modeling_dart.from_backbone import wrap_pretrained_backbone
        except ImportError as error:
            raise ImportError("`from_pretrained_backbone` needs the `modeling_dart` package installed.") from error
        return wrap_pretrained_backbone(source, model_class=cls, **options)


__all__ = ["DartPreTrainedModel", "DartModel", "DartForImageClassification", "DartModelOutput",
           "DartImageClassifierOutput", "check_classification_labels", "classify"]
