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
"""Configuration of RMT (VisRetNet, "RMT: Retentive Networks Meet Vision Transformers", CVPR 2024): `RmtConfig` and
the four released variants as presets."""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import warnings

from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import auto_docstring

# The four classification variants of the RMT release (`RMT_T3`, `RMT_S`, `RMT_M2`, `RMT_L6` of the original
# `classfication_release/RMT.py`, qhfan/RMT). Every field not listed takes `RmtConfig`'s default. The released DARMT-L6
# (HCPLab-SYSU/DART) is RMT-L6 behind DART's image reshaper.
RMT_PRESETS: dict[str, dict] = {
    "t3": {
        "embed_dims": [64, 128, 256, 512],
        "depths": [2, 2, 8, 2],
        "num_heads": [4, 4, 8, 16],
        "init_values": [2, 2, 2, 2],
        "heads_ranges": [4, 4, 6, 6],
        "mlp_ratios": [3, 3, 3, 3],
        "drop_path_rate": 0.1,
        "chunkwise_recurrents": [True, True, False, False],
        "layerscales": [False, False, False, False],
    },
    "s": {
        "embed_dims": [64, 128, 256, 512],
        "depths": [3, 4, 18, 4],
        "num_heads": [4, 4, 8, 16],
        "init_values": [2, 2, 2, 2],
        "heads_ranges": [4, 4, 6, 6],
        "mlp_ratios": [4, 4, 3, 3],
        "drop_path_rate": 0.15,
        "chunkwise_recurrents": [True, True, True, False],
        "layerscales": [False, False, False, False],
    },
    "m2": {
        "embed_dims": [80, 160, 320, 512],
        "depths": [4, 8, 25, 8],
        "num_heads": [5, 5, 10, 16],
        "init_values": [2, 2, 2, 2],
        "heads_ranges": [5, 5, 6, 6],
        "mlp_ratios": [4, 4, 3, 3],
        "drop_path_rate": 0.4,
        "chunkwise_recurrents": [True, True, True, False],
        "layerscales": [False, False, True, True],
        "layer_init_values": 1e-6,
    },
    "l6": {
        "embed_dims": [112, 224, 448, 640],
        "depths": [4, 8, 25, 8],
        "num_heads": [7, 7, 14, 20],
        "init_values": [2, 2, 2, 2],
        "heads_ranges": [6, 6, 6, 6],
        "mlp_ratios": [4, 4, 3, 3],
        "drop_path_rate": 0.5,
        "chunkwise_recurrents": [True, True, True, False],
        "layerscales": [False, False, True, True],
        "layer_init_values": 1e-6,
    },
}

_STAGE_LISTS = ("embed_dims", "depths", "num_heads", "init_values", "heads_ranges", "mlp_ratios",
                "chunkwise_recurrents", "layerscales")


# `@strict` (Transformers' dataclass configs) is left out on purpose, as for `DartConfig`: it raises huggingface_hub's
# `StrictDataclassFieldValidationError`, which is neither a `ValueError` nor a `TypeError`; RmtConfig checks its fields
# itself (at construction, and again when a model is built from it).
@auto_docstring(
    custom_intro="""Configuration of an RMT (VisRetNet) image model: a convolutional stem of stride 4, then stages of retention blocks joined by stride-2 convolutional patch merging, as in "RMT: Retentive Networks Meet Vision Transformers" (Fan et al., CVPR 2024). Each per-stage field is a list with one entry per stage. The defaults are RMT-T3; `RmtConfig.from_preset("t3" | "s" | "m2" | "l6", **overrides)` gives the four released variants (see `RMT_PRESETS`).""",
)
class RmtConfig(BackboneConfigMixin, PreTrainedConfig):  # trf-ignore: TRF010
    r"""
    num_channels (`int`, *optional*, defaults to 3):
        Number of input channels.
    embed_dims (`list[int]`, *optional*, defaults to `[64, 128, 256, 512]`):
        Width of each stage. The stem's first two convolutions have `embed_dims[0] // 2` channels.
    depths (`list[int]`, *optional*, defaults to `[2, 2, 8, 2]`):
        Number of retention blocks in each stage.
    num_heads (`list[int]`, *optional*, defaults to `[4, 4, 8, 16]`):
        Retention heads of each stage; `embed_dims[i] / num_heads[i]` (the key dimension) must be an even integer
        (the rotary embedding rotates pairs of channels).
    init_values (`list[float]`, *optional*, defaults to `[2, 2, 2, 2]`):
        Decay of the first head of each stage: head `h` of `n` has the per-step decay factor
        `1 - 2**(-init_values[i] - heads_ranges[i] * h / n)`.
    heads_ranges (`list[float]`, *optional*, defaults to `[4, 4, 6, 6]`):
        How far the heads' decay exponents spread within each stage (see `init_values`).
    mlp_ratios (`list[float]`, *optional*, defaults to `[3, 3, 3, 3]`):
        Feed-forward width of each stage relative to its width (`int(mlp_ratios[i] * embed_dims[i])`).
    chunkwise_recurrents (`list[bool]`, *optional*, defaults to `[True, True, False, False]`):
        Per stage, `True` for the decomposed (axial) retention -- along each row, then along each column --, `False`
        for retention over the whole feature map.
    layerscales (`list[bool]`, *optional*, defaults to `[False, False, False, False]`):
        Per stage, whether the two residual branches of every block are scaled by learned per-channel factors.
    layer_init_values (`float`, *optional*, defaults to 1e-6):
        Initial value of the layer-scale factors.
    drop_path_rate (`float`, *optional*, defaults to 0.1):
        Stochastic depth rate, rising linearly from 0 over all blocks of all stages.
    projection (`int`, *optional*, defaults to 1024):
        Width of the classification model's per-position projection before pooling.
    hidden_act (`str`, *optional*, defaults to `"gelu"`):
        Activation of the stem and of the feed-forward networks.
    layer_norm_eps (`float`, *optional*, defaults to 1e-6):
        Epsilon of the blocks' LayerNorms.
    batch_norm_eps (`float`, *optional*, defaults to 1e-5):
        Epsilon of the BatchNorms of the stem, the patch merging and the classification projection.
    rope_theta (`float`, *optional*, defaults to 10000.0):
        Base of the rotary embedding's frequencies (`rope_theta**-t` for `key_dim / 2` values of `t` evenly spaced
        in [0, 1]).
    initializer_range (`float`, *optional*, defaults to 0.02):
        Standard deviation of the truncated normal initialiser of the linear layers.
    out_features (`list[str]`, *optional*):
        Backbone only: the stages whose feature maps [`RmtBackbone`] returns, among `"stem"`, `"stage1"`, ... (the
        last stage by default).
    out_indices (`list[int]`, *optional*):
        Backbone only: the same as `out_features`, by index in `stage_names` (0 is the stem).
    """

    model_type = "rmt"
    attribute_map = {"hidden_sizes": "embed_dims"}

    def __init__(
        self,
        num_channels: int = 3,
        embed_dims: list[int] | None = None,
        depths: list[int] | None = None,
        num_heads: list[int] | None = None,
        init_values: list[float] | None = None,
        heads_ranges: list[float] | None = None,
        mlp_ratios: list[float] | None = None,
        chunkwise_recurrents: list[bool] | None = None,
        layerscales: list[bool] | None = None,
        layer_init_values: float = 1e-6,
        drop_path_rate: float = 0.1,
        projection: int = 1024,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        batch_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        initializer_range: float = 0.02,
        out_features: list[str] | None = None,
        out_indices: list[int] | None = None,
        **kwargs,
    ):
        defaults = RMT_PRESETS["t3"]
        given = {"embed_dims": embed_dims, "depths": depths, "num_heads": num_heads, "init_values": init_values,
                 "heads_ranges": heads_ranges, "mlp_ratios": mlp_ratios, "chunkwise_recurrents": chunkwise_recurrents,
                 "layerscales": layerscales}
        for name, value in given.items():
            if value is None:
                value = defaults[name]
            setattr(self, name, list(value) if isinstance(value, (list, tuple)) else value)
        self.num_channels = num_channels
        self.layer_init_values = layer_init_values
        self.drop_path_rate = drop_path_rate
        self.projection = projection
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.batch_norm_eps = batch_norm_eps
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        kwargs.pop("model_type", None)
        kwargs.pop("stage_names", None)  # derived from `depths`
        _warn_near_misses(type(self), kwargs)
        super().__init__(**kwargs)
        self.validate_architecture()
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]
        self.set_output_features_output_indices(out_features=out_features, out_indices=out_indices)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> RmtConfig:
        """The configuration of a released RMT variant: `name` is `"t3"`, `"s"`, `"m2"` or `"l6"` (any case, with or
        without an `"rmt-"` / `"rmt_"` prefix); `overrides` replace single fields (e.g. `num_labels=10`)."""
        if not isinstance(name, str):
            raise TypeError(f"RmtConfig.from_preset: `name` must be a string, got {type(name).__name__}.")
        key = name.lower()
        for prefix in ("rmt-", "rmt_"):
            key = key.removeprefix(prefix)
        if key not in RMT_PRESETS:
            raise ValueError(f"RmtConfig.from_preset: `name` must be one of {sorted(RMT_PRESETS)}, got {name!r}.")
        return cls(**{**copy.deepcopy(RMT_PRESETS[key]), **overrides})

    @property
    def num_stages(self) -> int:
        """Number of stages (the length of every per-stage list)."""
        return len(self.depths)

    def key_dims(self) -> list[int]:
        """Per stage, the width of one retention head (`embed_dims[i] // num_heads[i]`)."""
        return [dim // heads for dim, heads in zip(self.embed_dims, self.num_heads)]

    def ffn_dims(self) -> list[int]:
        """Per stage, the width of the feed-forward network (`int(mlp_ratios[i] * embed_dims[i])`)."""
        return [int(ratio * dim) for ratio, dim in zip(self.mlp_ratios, self.embed_dims)]

    def validate_architecture(self) -> None:
        """Check every architecture field and the relations between them; raise a `ValueError` or `TypeError` that
        names the field."""
        name = type(self).__name__
        for field in _STAGE_LISTS:
            value = getattr(self, field)
            if not isinstance(value, (list, tuple)) or not value:
                raise TypeError(f"{name}: `{field}` must be a non-empty list with one entry per stage, got {value!r}.")
        lengths = {field: len(getattr(self, field)) for field in _STAGE_LISTS}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{name}: the per-stage lists must all have one entry per stage, got lengths {lengths}.")
        for field in ("embed_dims", "depths", "num_heads"):
            for value in getattr(self, field):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name}: `{field}` must hold positive integers, got {getattr(self, field)!r}.")
        for field in ("init_values", "heads_ranges", "mlp_ratios"):
            for value in getattr(self, field):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                    raise ValueError(f"{name}: `{field}` must hold positive finite numbers, got "
                                     f"{getattr(self, field)!r}.")
        for field in ("chunkwise_recurrents", "layerscales"):
            for value in getattr(self, field):
                if not isinstance(value, bool):
                    raise TypeError(f"{name}: `{field}` must hold bools (True or False), got {getattr(self, field)!r}.")
        for stage, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads)):
            if dim % heads != 0 or (dim // heads) % 2 != 0:
                raise ValueError(
                    f"{name}: `embed_dims[{stage}]` ({dim}) must be `num_heads[{stage}]` ({heads}) times an even key "
                    "dimension (the rotary embedding rotates pairs of channels)."
                )
        if self.embed_dims[0] < 2:
            raise ValueError(f"{name}: `embed_dims[0]` must be at least 2 (the stem starts with `embed_dims[0] // 2` "
                             f"channels), got {self.embed_dims[0]}.")
        for stage, width in enumerate(self.ffn_dims()):
            if width < 1:
                raise ValueError(f"{name}: `mlp_ratios[{stage}]` gives an empty feed-forward network "
                                 f"(int({self.mlp_ratios[stage]} * {self.embed_dims[stage]}) = {width}).")
        for field in ("num_channels", "projection"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: `{field}` must be a positive integer, got {value!r}.")
        value = self.drop_path_rate
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: `drop_path_rate` must be a float in [0, 1), got {value!r}.")
        for field in ("layer_init_values", "layer_norm_eps", "batch_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name}: `{field}` must be a positive finite number, got {value!r}.")
        from transformers.activations import ACT2CLS

        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2CLS:
            raise ValueError(f"{name}: `hidden_act` must be the name of an activation, one of {sorted(ACT2CLS)}, got "
                             f"{self.hidden_act!r}.")


def _warn_near_misses(config_class: type, kwargs: dict) -> None:
    """Warn about a keyword that is no field of `config_class` but close to one (`embed_dim` for `embed_dims`):
    Transformers keeps unknown keywords as attributes, so such a typo would change nothing, silently."""
    fields = [name for name in inspect.signature(config_class.__init__).parameters if name not in ("self", "kwargs")]
    for key in kwargs:
        if key in fields or key.startswith("_"):
            continue
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.85)
        if close:
            warnings.warn(f"{config_class.__name__}: unknown argument `{key}` is kept as an attribute and changes "
                          f"nothing; did you mean `{close[0]}`?", UserWarning, stacklevel=3)


__all__ = ["RmtConfig", "RMT_PRESETS"]
