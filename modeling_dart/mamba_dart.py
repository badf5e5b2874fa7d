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
"""The bidirectional Mamba ("bimamba v2") block of the Vim and VideoMamba backbones: RMSNorm, the mixer, stochastic
depth and the residual stream.

Parameter names follow the original code (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`, their `*_b`
backward twins and `out_proj`; blocks hold `mixer` and `norm`), so converting an original checkpoint is a prefix
rename. The selective scan and the causal convolution live in `selective_scan_dart`.

This file is shipped as Hub remote code: it imports only torch, transformers and its sibling `selective_scan_dart`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .layers_dart import DartDropPath
from .selective_scan_dart import (
    _KERNEL_CONV_WIDTHS,
    mamba_kernels,
    _selective_scan_time_major,
    causal_conv1d_silu_time_major,
    is_mamba_kernel_available,
)


class DartRMSNorm(nn.Module):
    """Root-mean-square normalisation without bias: `y = x * rsqrt(mean(x^2, -1) + eps) * weight`, computed in float32
    and returned in the input dtype (the `rms_norm_ref(upcast=True)` of mamba_ssm).

    Args:
        hidden_size (`int`): size of the last dimension.
        eps (`float`, defaults to 1e-5): added to the mean square.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states`: `(..., hidden_size)` -> same shape and dtype."""
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        inverse_rms = torch.rsqrt(hidden_states.square().mean(-1, keepdim=True) + self.eps)
        return (hidden_states * inverse_rms * self.weight.float()).to(input_dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class DartBiMambaMixer(nn.Module):
    """Bidirectional Mamba mixer, "bimamba v2" of Vision Mamba (Vim) and VideoMamba.

    One `in_proj` produces `x` and the gate `z`; a forward branch (`conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`) scans
    the sequence left to right and a backward branch (`conv1d_b`, `x_proj_b`, `dt_proj_b`, `A_b_log`, `D_b`) scans the
    flipped sequence, its output flipped back. Each branch computes `x = silu(causal_conv(x))`, `dt, B, C = x_proj(x)`,
    `delta = softplus(dt_proj(dt))`, the selective scan with `A = -exp(A_log)` and skip `D`, gated by `silu(z)`.
    The two outputs are summed, halved when `divide_out` (Vim; VideoMamba does not halve), and projected by `out_proj`.

    Args:
        hidden_size (`int`): model width `D`.
        state_size (`int`, defaults to 16): SSM state size `N`.
        conv_kernel (`int`, defaults to 4): width of the causal depthwise convolution.
        expand (`int`, defaults to 2): inner width `E = expand * hidden_size`.
        time_step_rank (`int`, *optional*): rank of the time-step projection; defaults to `ceil(hidden_size / 16)`.
        use_conv_bias (`bool`, defaults to `True`): bias on the convolutions.
        use_bias (`bool`, defaults to `False`): bias on `in_proj` and `out_proj`.
        divide_out (`bool`, defaults to `True`): halve the sum of both directions (Vim) or not (VideoMamba).
        use_kernels (`bool`, defaults to `True`): use the mamba-ssm / causal-conv1d kernels for CUDA tensors when they
            import; otherwise (or on any other device) the PyTorch path runs.
        layer_idx (`int`, *optional*): index of the layer, for bookkeeping.
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        time_step_rank: int | None = None,
        use_conv_bias: bool = True,
        use_bias: bool = False,
        divide_out: bool = True,
        use_kernels: bool = True,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.state_size = state_size
        self.conv_kernel = conv_kernel
        self.intermediate_size = expand * hidden_size
        self.time_step_rank = math.ceil(hidden_size / 16) if time_step_rank in (None, "auto") else int(time_step_rank)
        self.divide_out = divide_out
        self.use_kernels = use_kernels
        self.layer_idx = layer_idx
        inner = self.intermediate_size

        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=use_bias)
        self.out_proj = nn.Linear(inner, hidden_size, bias=use_bias)
        # Forward-direction branch, then its backward-direction twin (same shapes, own parameters).
        self.conv1d = nn.Conv1d(inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1, bias=use_conv_bias)
        self.x_proj = nn.Linear(inner, self.time_step_rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, state_size))
        self.D = nn.Parameter(torch.empty(inner))
        self.conv1d_b = nn.Conv1d(inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1, bias=use_conv_bias)
        self.x_proj_b = nn.Linear(inner, self.time_step_rank + 2 * state_size, bias=False)
        self.dt_proj_b = nn.Linear(self.time_step_rank, inner, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(inner, state_size))
        self.D_b = nn.Parameter(torch.empty(inner))
        for parameter in (self.A_log, self.D, self.A_b_log, self.D_b):
            parameter._no_weight_decay = True  # as in mamba_ssm; optimisers may read it
        self._init_mamba_weights()

    @torch.no_grad()
    def _init_mamba_weights(
        self,
        num_hidden_layers: int | None = None,
        time_step_min: float = 1e-3,
        time_step_max: float = 0.1,
        time_step_floor: float = 1e-4,
    ) -> None:
        """Mamba's initialisation, for both directions. Uses `transformers.initialization`, so parameters that
        `from_pretrained` already loaded are left untouched; a `PreTrainedModel._init_weights` can call it.

        - `A_log[e] = log(1 .. state_size)`, `D = 1` (S4D-real);
        - `dt_proj.weight ~ U(-r^-0.5, r^-0.5)` with `r = time_step_rank`; `dt_proj.bias = softplus^-1(dt)` with `dt`
          log-uniform in `[time_step_min, time_step_max]` (clamped below at `time_step_floor`);
        - `in_proj`, `x_proj`, `out_proj`, convolutions: PyTorch's default (Kaiming uniform, a=sqrt(5)); Linear biases
          zero; with `num_hidden_layers`, `out_proj.weight` is divided by `sqrt(num_hidden_layers)` (the
          `rescale_prenorm_residual` of mamba_ssm / Vim).
        """
        inner, state = self.intermediate_size, self.state_size
        device = self.A_log.device
        A = torch.arange(1, state + 1, dtype=torch.float32, device=device).expand(inner, state)
        dt_std = self.time_step_rank**-0.5
        for A_log, D, dt_proj, conv in (
            (self.A_log, self.D, self.dt_proj, self.conv1d),
            (self.A_b_log, self.D_b, self.dt_proj_b, self.conv1d_b),
        ):
            init.copy_(A_log, torch.log(A))
            init.ones_(D)
            init.uniform_(dt_proj.weight, -dt_std, dt_std)
            dt = torch.exp(
                torch.rand(inner, dtype=torch.float32, device=device)
                * (math.log(time_step_max) - math.log(time_step_min))
                + math.log(time_step_min)
            ).clamp(min=time_step_floor)
            init.copy_(dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            init.kaiming_uniform_(conv.weight, a=math.sqrt(5))
            if conv.bias is not None:
                bound = 1.0 / math.sqrt(conv.weight.shape[1] * conv.weight.shape[2])
                init.uniform_(conv.bias, -bound, bound)
        for linear in (self.in_proj, self.x_proj, self.x_proj_b):
            init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
        for linear in (self.in_proj, self.out_proj):
            if linear.bias is not None:
                init.zeros_(linear.bias)
        out_weight = self.out_proj.weight
        if not getattr(out_weight, "_is_hf_initialized", False):  # loaded weights are never rescaled
            init.kaiming_uniform_(out_weight, a=math.sqrt(5))
            if num_hidden_layers:
                out_weight /= math.sqrt(num_hidden_layers)

    def _should_use_kernels(self, hidden_states: torch.Tensor) -> bool:
        """Kernel path: requested, on CUDA, and mamba_ssm imports."""
        return self.use_kernels and hidden_states.is_cuda and is_mamba_kernel_available()

    def _ssm_parameters(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`A = -exp(A_log)` `(2E, N)`, `D` `(2E,)` and the time-step bias `(2E,)` of both directions, stacked
        [forward | backward], in float32 (float64 for a float64 model)."""
        scan_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        A = -torch.exp(torch.cat([self.A_log, self.A_b_log]).to(scan_dtype))
        D = torch.cat([self.D, self.D_b]).to(scan_dtype)
        delta_bias = torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]).to(scan_dtype)
        return A, D, delta_bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`hidden_states`: `(batch, length, hidden_size)` -> `(batch, length, hidden_size)`, same dtype.

        Both paths stack the two directions along the channels, `[forward E | backward (flipped) E]`, and run one
        convolution and one selective scan with two groups of `B` / `C` for both.
        """
        if self._should_use_kernels(hidden_states):
            return self._forward_with_kernels(hidden_states)
        return self._forward_pytorch(hidden_states)

    def _forward_pytorch(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """PyTorch path, computed time-major `(length, batch, channels)` end to end (the scan's natural layout)."""
        inner, rank, state = self.intermediate_size, self.time_step_rank, self.state_size
        xz = self.in_proj(hidden_states.transpose(0, 1).contiguous())  # (L, b, 2E): [x | z]
        x, z = xz[..., :inner], xz[..., inner:]
        x = torch.cat([x, x.flip(0)], dim=-1)  # (L, b, 2E)

        conv_weight = torch.cat([self.conv1d.weight, self.conv1d_b.weight])[:, 0]  # (2E, K)
        conv_bias = None if self.conv1d.bias is None else torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        x = causal_conv1d_silu_time_major(x, conv_weight, conv_bias)

        dts, Bs, Cs = [], [], []
        for branch_x, x_proj in ((x[..., :inner], self.x_proj), (x[..., inner:], self.x_proj_b)):
            dt, B, C = F.linear(branch_x, x_proj.weight).split([rank, state, state], dim=-1)  # (L, b, .)
            dts.append(dt)
            Bs.append(B)
            Cs.append(C)
        A, D, delta_bias = self._ssm_parameters(x.dtype)
        # The two time-step projections side by side (L, b, 2E). In float32/64 the bias is added here; in half
        # precision the scan adds it in float32, as the kernel does.
        fuse_bias = x.dtype in (torch.float32, torch.float64)
        biases = delta_bias.chunk(2) if fuse_bias else (None, None)
        delta = torch.cat(
            [F.linear(dts[0], self.dt_proj.weight, biases[0]), F.linear(dts[1], self.dt_proj_b.weight, biases[1])],
            dim=-1,
        )
        y = _selective_scan_time_major(
            x,
            delta,
            A,
            torch.stack(Bs, dim=2),  # (L, b, 2, N): group 0 forward, group 1 backward
            torch.stack(Cs, dim=2),
            D,
            delta_bias=None if fuse_bias else delta_bias,
            delta_softplus=True,
        )  # (L, b, 2E), not gated yet

        # Both branches are gated by the same z (the backward one by z flipped, then flipped back), so
        # y_f * silu(z) + flip(y_b * silu(flip(z))) = (y_f + flip(y_b)) * silu(z): one gate for both.
        out = (y[..., :inner] + y[..., inner:].flip(0)) * F.silu(z)
        if self.divide_out:
            out = out.mul_(0.5)
        return self.out_proj(out).transpose(0, 1).contiguous()

    def _forward_with_kernels(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Kernel path: mamba_ssm's `selective_scan_fn` (and causal_conv1d's `causal_conv1d_fn` when it imports and
        supports the width), on `(batch, channels, length)` tensors like the original."""
        inner, rank, state = self.intermediate_size, self.time_step_rank, self.state_size
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2E, L): [x | z]
        x, z = xz[:, :inner], xz[:, inner:]
        x = torch.cat([x, x.flip(-1)], dim=1)  # (b, 2E, L)
        z = torch.cat([z, z.flip(-1)], dim=1)

        conv_weight = torch.cat([self.conv1d.weight, self.conv1d_b.weight])[:, 0]  # (2E, K)
        conv_bias = None if self.conv1d.bias is None else torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        kernel_selective_scan, kernel_causal_conv1d = mamba_kernels()
        if kernel_causal_conv1d is not None and self.conv_kernel in _KERNEL_CONV_WIDTHS:
            x = kernel_causal_conv1d(x, conv_weight, conv_bias, activation="silu")
        else:
            length = x.shape[-1]
            x = F.silu(F.conv1d(x, conv_weight[:, None], conv_bias, padding=self.conv_kernel - 1, groups=2 * inner))
            x = x[..., :length]

        deltas, Bs, Cs = [], [], []
        for branch_x, x_proj, dt_proj in (
            (x[:, :inner], self.x_proj, self.dt_proj),
            (x[:, inner:], self.x_proj_b, self.dt_proj_b),
        ):
            dt, B, C = F.linear(branch_x.transpose(1, 2), x_proj.weight).split([rank, state, state], dim=-1)
            deltas.append(F.linear(dt, dt_proj.weight).transpose(1, 2))  # (b, E, L); its bias goes to the scan
            Bs.append(B.transpose(1, 2))
            Cs.append(C.transpose(1, 2))
        A, D, delta_bias = self._ssm_parameters(torch.float32)
        y = kernel_selective_scan(
            x.contiguous(),
            torch.cat(deltas, dim=1).contiguous(),
            A,
            torch.stack(Bs, dim=1).contiguous(),  # (b, 2, N, L): group 0 forward, group 1 backward
            torch.stack(Cs, dim=1).contiguous(),
            D=D,
            z=z.contiguous(),
            delta_bias=delta_bias,
            delta_softplus=True,
        )  # (b, 2E, L)

        out = y[:, :inner] + y[:, inner:].flip(-1)
        if self.divide_out:
            out = out * 0.5
        return self.out_proj(out.transpose(1, 2))


class DartMambaAddNorm(DartRMSNorm):
    """Residual add then RMSNorm, with the semantics of mamba_ssm's fused `rms_norm_fn(..., prenorm=True)`: the `norm`
    of every block and the final `norm_f` of the stack.

    `forward(hidden_states, residual)` forms `summed = hidden_states + residual` (or `hidden_states` when `residual` is
    None) in float32, normalises it in float32 and returns `(normalized, summed)`, both `(batch, length,
    hidden_size)`: `normalized` in the dtype of `weight`, `summed` in float32 if `residual_in_fp32` (else in the dtype
    of `hidden_states`). In float32, `normalized` equals `DartRMSNorm.forward(summed)`.

    Args:
        hidden_size (`int`): size of the last dimension.
        eps (`float`, defaults to 1e-5): added to the mean square.
        residual_in_fp32 (`bool`, defaults to `True`): keep the returned residual stream in float32.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__(hidden_size, eps=eps)
        self.residual_in_fp32 = residual_in_fp32

    def forward(
        self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        summed = hidden_states.float() if residual is None else hidden_states.float() + residual.float()
        normalized = super().forward(summed).to(self.weight.dtype)
        return normalized, (summed if self.residual_in_fp32 else summed.to(hidden_states.dtype))


class DartMambaBlock(GradientCheckpointingLayer):
    """Vim / VideoMamba block: `residual = drop_path(hidden_states) + residual`, `hidden_states = norm(residual)`,
    `hidden_states = mixer(hidden_states)`. The stack applies the final add + norm (a [`DartMambaAddNorm`]).

    Args:
        hidden_size (`int`): model width.
        state_size, conv_kernel, expand, time_step_rank, use_conv_bias, use_bias, divide_out, use_kernels: see
            `DartBiMambaMixer`.
        layer_norm_epsilon (`float`, defaults to 1e-5): RMSNorm epsilon.
        residual_in_fp32 (`bool`, defaults to `True`): keep the residual stream in float32.
        drop_path (`float`, defaults to 0.0): stochastic depth rate on the incoming branch output.
        layer_idx (`int`, *optional*): index of the layer.
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        time_step_rank: int | None = None,
        use_conv_bias: bool = True,
        use_bias: bool = False,
        divide_out: bool = True,
        use_kernels: bool = True,
        layer_norm_epsilon: float = 1e-5,
        residual_in_fp32: bool = True,
        drop_path: float = 0.0,
        layer_idx: int | None = None,
    ):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.layer_idx = layer_idx
        self.mixer = DartBiMambaMixer(
            hidden_size,
            state_size=state_size,
            conv_kernel=conv_kernel,
            expand=expand,
            time_step_rank=time_step_rank,
            use_conv_bias=use_conv_bias,
            use_bias=use_bias,
            divide_out=divide_out,
            use_kernels=use_kernels,
            layer_idx=layer_idx,
        )
        self.norm = DartMambaAddNorm(hidden_size, eps=layer_norm_epsilon, residual_in_fp32=residual_in_fp32)
        self.drop_path = DartDropPath(drop_path)

    def forward(
        self, hidden_states: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch, length, hidden_size)`): the previous block's mixer output
                (or the embeddings for the first block).
            residual (`torch.Tensor` of the same shape, *optional*): residual stream; None for the first block.

        Returns:
            `(hidden_states, residual)`: this block's mixer output (dtype of the parameters) and the updated residual
            (float32 when `residual_in_fp32`).
        """
        if residual is not None:
            hidden_states = self.drop_path(hidden_states)
        hidden_states, residual = self.norm(hidden_states, residual)
        hidden_states = self.mixer(hidden_states)
        return hidden_states, residual


__all__ = ["DartRMSNorm", "DartMambaAddNorm", "DartBiMambaMixer", "DartMambaBlock"]
