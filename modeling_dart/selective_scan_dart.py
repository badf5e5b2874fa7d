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
"""The selective scan of Mamba (S6) and the causal depthwise convolution, in PyTorch, with the optional CUDA kernels.

- **Kernel path**: `mamba_ssm`'s selective-scan CUDA kernel and `causal_conv1d`, used by the mixer when the tensors are
  on CUDA, the packages import and `use_kernels=True`.
- **PyTorch path**: any device and dtype, forward and backward. `selective_scan` is a custom autograd function that
  walks the sequence in cache-sized time chunks, keeps no autograd graph per time step, stores one state per chunk
  boundary and recomputes the rest in the backward pass (the CUDA kernel's strategy). Under `torch.compile` a closed
  form over blocks of steps runs instead, and under `torch.export` one `torch.ops.higher_order.scan`.

The recurrence, not Mamba-2's closed form, runs inside each chunk: Mamba-1 decays differ per channel and per state,
so the closed form needs a `(batch, channels, chunk, chunk, state)` tensor per chunk (see `docs/design.md`).

This file is shipped as Hub remote code: it imports only torch, transformers and (optionally) the kernels.
"""


from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


try:  # optional CUDA kernels
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _kernel_selective_scan
except (ImportError, OSError):  # pragma: no cover - depends on the environment
    _kernel_selective_scan = None

try:  # optional CUDA kernel for the causal depthwise convolution (widths 2 to 4)
    from causal_conv1d import causal_conv1d_fn as _kernel_causal_conv1d
except (ImportError, OSError):  # pragma: no cover - depends on the environment
    _kernel_causal_conv1d = None

_KERNEL_CONV_WIDTHS = (2, 3, 4)

# Bytes of one time chunk of the PyTorch scan (per work buffer): small enough to stay in the CPU caches.
_CHUNK_BYTES = 2 * 1024 * 1024
_MIN_CHUNK, _MAX_CHUNK = 4, 64


def mamba_kernels() -> tuple:
    """`(selective_scan_fn, causal_conv1d_fn)` of the installed CUDA kernels, None for each one that does not import."""
    return _kernel_selective_scan, _kernel_causal_conv1d


def is_mamba_kernel_available() -> bool:
    """Whether the `mamba_ssm` selective-scan kernel imports (the kernel path then runs for CUDA tensors)."""
    return _kernel_selective_scan is not None


def _exp2_flush_subnormal_(log2_decay: torch.Tensor) -> torch.Tensor:
    """In place `2 ** x`, giving exactly 0 where the result would be subnormal (x <= -126 in float32).

    Subnormal decays (strongly decaying channels over long sequences) make every multiply-add of the recurrence take a
    slow microcode path on x86; a decay below 2**-126 changes no state by more than that factor, so it is flushed to
    zero here instead of relying on the global `torch.set_flush_denormal` (measurement: `benchmarks/README.md`).
    """
    if log2_decay.dtype == torch.float32:
        torch.nn.functional.threshold_(log2_decay, -126.0, float("-inf"))
    return log2_decay.exp2_()


class _ChunkedSelectiveScan(torch.autograd.Function):
    """Selective scan on time-major tensors with a hand-written backward pass.

    Computes `h_t = exp(delta_t * A) * h_(t-1) + delta_t * u_t * B_t` (`h_(-1) = 0`), `y_t = <C_t, h_t> + D * u_t`,
    `out_t = y_t * silu(z_t)`.

    Shapes (time-major): `u`, `delta`, `z` `(length, batch, channels)`; `A` `(channels, state)`; `B`, `C`
    `(length, batch, groups, state)`, channel `e` reading group `e // (channels // groups)`; `D` `(channels,)`. `D` and
    `z` may be None. All tensors share one dtype (float32 or float64). Returns `out` `(length, batch, channels)`.

    The sequence is walked in chunks of `chunk_size` steps. Per chunk, the decays `exp(delta * A)` and the inputs
    `delta * u * B` are written to cache-sized buffers laid out `(steps, batch, groups, state, channels_per_group)`, the
    recurrence is one in-place `addcmul_` per step, and the outputs are one batched matmul with `C`. Only the state at
    the end of each chunk is kept for the backward pass (plus the pre-gate output when `z` is given); the backward pass
    recomputes each chunk's states, runs the adjoint recurrence `g_t = C_t dy_t + exp(delta_(t+1) * A) g_(t+1)` in
    reverse and reduces the gradients with batched matmuls.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, chunk_size: int, keep_for_backward: bool):
        u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
        length, batch_size, channels = u.shape
        groups, state_size = B.shape[2], B.shape[3]
        group_channels = channels // groups
        step_shape = (batch_size, groups, state_size, group_channels)

        # exp(delta * A) == exp2(delta * A * log2(e)); exp2 is about twice as fast as exp on CPU.
        A_log2_t = (A * math.log2(math.e)).view(groups, group_channels, state_size).transpose(1, 2).contiguous()
        x = u * delta  # delta_t * u_t, (L, b, E)
        out = torch.empty_like(u)

        num_chunks = -(-length // chunk_size)
        # State at the end of each chunk but the last (the start state of the next one).
        chunk_states = u.new_empty((num_chunks - 1) if keep_for_backward else 0, *step_shape)
        previous_state = None
        decay_buffer = u.new_empty(chunk_size, *step_shape)
        # Two state buffers used in turn, so the last state of a chunk stays readable while the next one is filled.
        state_buffers = (u.new_empty(chunk_size, *step_shape), u.new_empty(chunk_size, *step_shape))
        for chunk in range(num_chunks):
            start, end = chunk * chunk_size, min((chunk + 1) * chunk_size, length)
            steps = end - start
            rows = steps * batch_size * groups
            decay = decay_buffer[:steps]
            torch.mul(delta[start:end].view(steps, batch_size, groups, 1, group_channels), A_log2_t, out=decay)
            _exp2_flush_subnormal_(decay)
            states = state_buffers[chunk % 2][:steps]
            torch.mul(
                x[start:end].view(steps, batch_size, groups, 1, group_channels),
                B[start:end].view(steps, batch_size, groups, state_size, 1),
                out=states,
            )
            state_steps, decay_steps = states.unbind(0), decay.unbind(0)
            if previous_state is not None:
                state_steps[0].addcmul_(decay_steps[0], previous_state)
            for step in range(1, steps):
                state_steps[step].addcmul_(decay_steps[step], state_steps[step - 1])
            torch.bmm(
                C[start:end].view(rows, 1, state_size),
                states.view(rows, state_size, group_channels),
                out=out[start:end].view(rows, 1, group_channels),
            )
            previous_state = state_steps[-1]
            if keep_for_backward and chunk < num_chunks - 1:
                chunk_states[chunk].copy_(previous_state)

        if D is not None:
            out.addcmul_(u, D)
        pre_gate = None
        if z is not None:
            if keep_for_backward:
                pre_gate = out.clone()
            out.mul_(F.silu(z))

        ctx.chunk_size = chunk_size
        ctx.has_D, ctx.has_z = D is not None, z is not None
        ctx.save_for_backward(u, delta, A, B, C, D, z, chunk_states, pre_gate)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        u, delta, A, B, C, D, z, chunk_states, pre_gate = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        length, batch_size, channels = u.shape
        groups, state_size = B.shape[2], B.shape[3]
        group_channels = channels // groups
        step_shape = (batch_size, groups, state_size, group_channels)
        num_chunks = -(-length // chunk_size)
        if chunk_states.shape[0] != num_chunks - 1:
            raise RuntimeError("selective_scan: the forward pass did not keep the chunk states needed for backward.")
        grad_out = grad_out.contiguous()

        # Gate and skip connection.
        grad_z = grad_D = None
        if ctx.has_z:
            sigmoid_z = torch.sigmoid(z)
            grad_y = grad_out * z * sigmoid_z  # through out = y * silu(z)
            grad_z = grad_out * pre_gate * sigmoid_z * (1 + z * (1 - sigmoid_z))
        else:
            grad_y = grad_out
        grad_u = torch.empty_like(u)
        if ctx.has_D:
            grad_D = (grad_y * u).sum((0, 1))

        A_t = A.view(groups, group_channels, state_size).transpose(1, 2).contiguous()  # (G, N, Eg)
        A_log2_t = A_t * math.log2(math.e)
        x = u * delta
        grad_delta = torch.empty_like(delta)
        grad_B = torch.empty_like(B)
        grad_C = torch.empty_like(C)
        grad_A_t = torch.zeros_like(A_t)

        decay_buffer = u.new_empty(chunk_size, *step_shape)
        state_buffer = u.new_empty(chunk_size, *step_shape)
        adjoint_buffer = u.new_empty(chunk_size, *step_shape)
        work_buffer = u.new_empty(chunk_size, *step_shape)
        carry = None  # exp(delta * A) * g at the first step of the chunk after the current one

        for chunk in reversed(range(num_chunks)):
            start, end = chunk * chunk_size, min((chunk + 1) * chunk_size, length)
            steps = end - start
            rows = steps * batch_size * groups
            delta_chunk = delta[start:end].view(steps, batch_size, groups, 1, group_channels)

            # 1. Recompute the decays and the states of the chunk.
            decay = decay_buffer[:steps]
            torch.mul(delta_chunk, A_log2_t, out=decay)
            _exp2_flush_subnormal_(decay)
            previous_state = chunk_states[chunk - 1] if chunk > 0 else None  # the state before the chunk
            states = state_buffer[:steps]
            torch.mul(
                x[start:end].view(steps, batch_size, groups, 1, group_channels),
                B[start:end].view(steps, batch_size, groups, state_size, 1),
                out=states,
            )
            state_steps, decay_steps = states.unbind(0), decay.unbind(0)
            if previous_state is not None:
                state_steps[0].addcmul_(decay_steps[0], previous_state)
            for step in range(1, steps):
                state_steps[step].addcmul_(decay_steps[step], state_steps[step - 1])

            # 2. Adjoint states g_t = dL/dh_t, backwards in time.
            grad_y_chunk = grad_y[start:end]
            adjoint = adjoint_buffer[:steps]
            torch.mul(
                grad_y_chunk.view(steps, batch_size, groups, 1, group_channels),
                C[start:end].view(steps, batch_size, groups, state_size, 1),
                out=adjoint,
            )
            adjoint_steps = adjoint.unbind(0)
            if carry is not None:
                adjoint_steps[-1].add_(carry)
            for step in range(steps - 2, -1, -1):
                adjoint_steps[step].addcmul_(decay_steps[step + 1], adjoint_steps[step + 1])
            if chunk > 0:
                carry = decay_steps[0] * adjoint_steps[0]

            # 3. C, B and x = delta * u: contractions over the channels or over the state.
            adjoint_rows = adjoint.view(rows, state_size, group_channels)
            torch.bmm(
                grad_y_chunk.view(rows, 1, group_channels),
                states.view(rows, state_size, group_channels).transpose(1, 2),
                out=grad_C[start:end].view(rows, 1, state_size),
            )
            torch.bmm(
                x[start:end].view(rows, 1, group_channels),
                adjoint_rows.transpose(1, 2),
                out=grad_B[start:end].view(rows, 1, state_size),
            )
            grad_x = torch.bmm(B[start:end].view(rows, 1, state_size), adjoint_rows).view(steps, batch_size, channels)

            # 4. The log-decay delta * A receives g_t * exp(delta_t * A) * h_(t-1).
            grad_log_decay = work_buffer[:steps]
            torch.mul(decay[1:], states[:-1], out=grad_log_decay[1:])
            if previous_state is not None:
                torch.mul(decay[0], previous_state, out=grad_log_decay[0])
            else:
                grad_log_decay[0].zero_()
            grad_log_decay.mul_(adjoint)
            grad_A_t.add_((grad_log_decay * delta_chunk).sum((0, 1)))
            torch.sum(
                grad_log_decay.mul_(A_t),
                dim=-2,
                out=grad_delta[start:end].view(steps, batch_size, groups, group_channels),
            )
            grad_delta[start:end].addcmul_(grad_x, u[start:end])
            torch.mul(grad_x, delta[start:end], out=grad_u[start:end])

        if ctx.has_D:
            grad_u.addcmul_(grad_y, D)
        grad_A = grad_A_t.transpose(1, 2).reshape(channels, state_size)
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_z, None, None


def _is_tracing() -> bool:
    """True under torch.export / torch.compile / torch.jit.trace, which cannot capture the in-place, `out=` buffer code
    of the autograd functions above; a plain functional formulation runs there instead (`_selective_scan_exported`
    under torch.export, `_selective_scan_functional` otherwise)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _is_exporting() -> bool:
    """True under torch.export. A function of this module, so that a test can force the exported path by replacing
    it here: replacing `torch.compiler.is_exporting` itself while dynamo builds its caches breaks later compiles in
    the same process."""
    return torch.compiler.is_exporting()


# Time steps per block of the compiled scan (torch.compile, torch.jit.trace; exported graphs use
# `_selective_scan_exported`): the graph holds one block of closed-form operations per `_TRACED_BLOCK` steps instead
# of one per step (197 steps: 13 blocks, not 197), which keeps compile times small; a block's pairwise decays
# `(block, block, batch, channels, state)` cost `block` times the memory of the states.
_TRACED_BLOCK = 16


def _selective_scan_functional(u, delta, A, B, C, D, z, block: int | None = None):
    """Same contract as `_ChunkedSelectiveScan` (time-major shapes), written with out-of-place operations only (for
    tracing and export), in closed form over blocks of `block` steps.

    Within a block, with the log-decays `l_t = delta_t * A` (<= 0), the recurrence `h_t = exp(l_t) h_(t-1) + x_t`
    unrolls to `h_t = exp(S_t) h_0 + sum_(s <= t) exp(D_ts) x_s`, where `S_t = l_1 + ... + l_t` and
    `D_ts = l_(s+1) + ... + l_t`. `D` is summed directly (a cumulative sum of the masked log-decays), not as a
    difference of two cumulative sums, so no precision is lost to cancellation, and every exponent is <= 0.
    """
    block = _TRACED_BLOCK if block is None else block
    length, batch_size, channels = u.shape
    groups, state_size = B.shape[2], B.shape[3]
    group_channels = channels // groups
    A_t = A.view(groups, group_channels, state_size).transpose(1, 2)  # (G, N, Eg)
    log_decay = delta.view(length, batch_size, groups, 1, group_channels) * A_t  # (L, b, G, N, Eg)
    inputs = (u * delta).view(length, batch_size, groups, 1, group_channels) * B.unsqueeze(-1)
    state = torch.zeros_like(inputs[0])
    outputs = []
    for start in range(0, length, block):
        steps = min(block, length - start)
        l_block = log_decay[start : start + steps]  # (c, b, G, N, Eg)
        x_block = inputs[start : start + steps]
        later = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril(-1)  # [t, s]: t > s
        inclusive = torch.ones(steps, steps, dtype=torch.bool, device=u.device).tril()  # t >= s
        shape = (steps, steps) + (1,) * (l_block.dim() - 1)
        pair = torch.where(later.view(shape), l_block.unsqueeze(1), l_block.new_zeros(()))  # l_t where t > s
        weights = torch.where(inclusive.view(shape), torch.exp(pair.cumsum(dim=0)), pair.new_zeros(()))  # [t, s]
        states = (weights * x_block.unsqueeze(0)).sum(dim=1) + torch.exp(l_block.cumsum(dim=0)) * state
        outputs.append((states * C[start : start + steps].unsqueeze(-1)).sum(-2))  # (c, b, G, Eg)
        state = states[-1]
    y = torch.cat(outputs).reshape(length, batch_size, channels)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def _scan_step(state, step_inputs):
    """One step of the exported scan: `h_t = decay_t * h_(t-1) + x_t`, `y_t = <C_t, h_t>` (a pure function, as
    `torch.ops.higher_order.scan` requires: no captured tensors, no output aliasing an input or another output)."""
    decay, x, C = step_inputs
    state = decay * state + x
    return state, (state * C).sum(-2)


def _selective_scan_exported(u, delta, A, B, C, D, z):
    """Same contract as `_ChunkedSelectiveScan` (time-major shapes), for `torch.export` and the ONNX exporter: the
    decays and inputs of all steps are computed at once, and the recurrence itself is one
    `torch.ops.higher_order.scan`, which the ONNX exporter writes as one ONNX `Scan` node over the time steps.

    The closed-form blocks of `_selective_scan_functional` are fine for the compiler, but exported to ONNX their
    pairwise decays (`block` x `block` times the states) dominate onnxruntime's time and the export's
    (`benchmarks/benchmark_onnx.py` measures it).
    """
    from torch._higher_order_ops.scan import scan

    length, batch_size, channels = u.shape
    groups, state_size = B.shape[2], B.shape[3]
    group_channels = channels // groups
    A_t = A.view(groups, group_channels, state_size).transpose(1, 2)  # (G, N, Eg)
    # (L, b, G, N, Eg). Unlike the eager scan, subnormal decays are not flushed to zero: a threshold pass over these
    # tensors doubled onnxruntime's time for DART-Vim-Ti (2.2 vs 1.1 s, batch 8 at 448)
    decay = torch.exp(delta.view(length, batch_size, groups, 1, group_channels) * A_t)
    inputs = (u * delta).view(length, batch_size, groups, 1, group_channels) * B.unsqueeze(-1)
    _, y = scan(_scan_step, torch.zeros_like(inputs[0]), (decay, inputs, C.unsqueeze(-1)))  # y: (L, b, G, Eg)
    y = y.reshape(length, batch_size, channels)
    if D is not None:
        y = y + u * D
    if z is not None:
        y = y * F.silu(z)
    return y


def _default_chunk_size(batch_size: int, channels: int, state_size: int, element_size: int) -> int:
    """Time steps per chunk such that one `(chunk, batch, channels, state)` buffer is about `_CHUNK_BYTES`."""
    step_bytes = max(1, batch_size * channels * state_size * element_size)
    return int(min(_MAX_CHUNK, max(_MIN_CHUNK, _CHUNK_BYTES // step_bytes)))


def _selective_scan_time_major(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """`selective_scan` on time-major tensors: `u`, `delta`, `z` `(length, batch, channels)`; `B`, `C`
    `(length, batch, groups, state)`; returns `(length, batch, channels)` in the dtype of `u`."""
    length, batch_size, channels = u.shape
    state_size = A.shape[1]
    input_dtype = u.dtype
    compute_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
    delta = delta.to(compute_dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute_dtype)
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20, as in the kernel
    tensors = [u, delta, A, B, C, D, z]
    u, delta, A, B, C, D, z = (None if t is None else t.to(compute_dtype) for t in tensors)
    if _is_tracing():  # before the chunk size, which depends on the batch size (a guard on a dynamic batch)
        if _is_exporting():
            return _selective_scan_exported(u, delta, A, B, C, D, z).to(input_dtype)
        return _selective_scan_functional(u, delta, A, B, C, D, z).to(input_dtype)
    if chunk_size is None:
        chunk_size = _default_chunk_size(batch_size, channels, state_size, torch.finfo(compute_dtype).bits // 8)
    chunk_size = max(1, min(int(chunk_size), length))
    keep_for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z)
    )
    out = _ChunkedSelectiveScan.apply(u, delta, A, B, C, D, z, chunk_size, keep_for_backward)
    return out.to(input_dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Selective scan (Mamba's S6) in pure PyTorch; differentiable, any device, with the arguments of
    `mamba_ssm.ops.selective_scan_interface.selective_scan_fn` (without `return_last_state`).

    Computes, per channel `e` and time step `t`:

        delta_t = softplus(delta_t + delta_bias[e])              (bias and softplus optional; softplus threshold 20)
        h_t     = exp(delta_t * A[e]) * h_(t-1) + delta_t * B_t * u_t        (h_(-1) = 0; h_t has `state` entries)
        y_t     = <C_t, h_t> + D[e] * u_t
        y_t     = y_t * silu(z_t)                                (if `z` is given)

    Args:
        u (`torch.Tensor` of shape `(batch, channels, length)`): input sequence.
        delta (`torch.Tensor` of shape `(batch, channels, length)`): time steps (before bias and softplus).
        A (`torch.Tensor` of shape `(channels, state)`): state matrix (negative entries for a decaying state).
        B (`torch.Tensor` of shape `(batch, state, length)` or `(batch, groups, state, length)`): input projection;
            with groups, channel `e` uses group `e // (channels // groups)`.
        C (`torch.Tensor`, same shape as `B`): output projection.
        D (`torch.Tensor` of shape `(channels,)`, *optional*): skip connection.
        z (`torch.Tensor` of shape `(batch, channels, length)`, *optional*): gate.
        delta_bias (`torch.Tensor` of shape `(channels,)`, *optional*): added to `delta`.
        delta_softplus (`bool`, defaults to `False`): apply softplus to `delta + delta_bias`, as the kernel does.
        chunk_size (`int`, *optional*): time steps per chunk; by default chosen so that a chunk buffer fits the CPU
            caches. It changes speed and memory only, not the result (up to rounding).

    Returns:
        `torch.Tensor` of shape `(batch, channels, length)` in the dtype of `u`. The arithmetic runs in float32
        (float64 for float64 inputs), so float16 / bfloat16 inputs are upcast internally.
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (batch, channels, length), got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch_size, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, state), got {tuple(A.shape)}")
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    state_size, groups = A.shape[1], B.shape[1]
    for name, tensor in (("B", B), ("C", C)):
        if tuple(tensor.shape) != (batch_size, groups, state_size, length):
            raise ValueError(
                f"{name} must be (batch, state, length) or (batch, groups, state, length) with batch={batch_size}, "
                f"state={state_size}, length={length}; got {tuple(tensor.shape)}"
            )
    if channels % groups != 0:
        raise ValueError(f"channels ({channels}) must be a multiple of the number of B/C groups ({groups})")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have the shape of u {tuple(u.shape)}, got {tuple(z.shape)}")
    if length == 0:
        return u * 0

    out = _selective_scan_time_major(
        u.permute(2, 0, 1),
        delta.permute(2, 0, 1),
        A,
        B.permute(3, 0, 1, 2),
        C.permute(3, 0, 1, 2),
        D,
        None if z is None else z.permute(2, 0, 1),
        delta_bias,
        delta_softplus,
        chunk_size,
    )
    return out.permute(1, 2, 0)


class _CausalConv1dSiLU(torch.autograd.Function):
    """`silu(causal depthwise conv1d(x) + bias)` on time-major `x` `(length, batch, channels)` with `weight`
    `(channels, width)` and `bias` `(channels,)` or None: output `t` reads inputs `t - width + 1 .. t` (zeros before the
    start). Shifted multiply-adds along the (outermost) time axis, so no layout change and no padding copy."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        length, width = x.shape[0], weight.shape[1]
        pre = torch.addcmul(bias, x, weight[:, -1]) if bias is not None else x * weight[:, -1]
        for tap in range(width - 1):
            shift = width - 1 - tap
            if shift < length:
                pre[shift:].addcmul_(x[: length - shift], weight[:, tap])
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, pre)
        return F.silu(pre)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, pre = ctx.saved_tensors
        length, width = x.shape[0], weight.shape[1]
        grad_pre = torch.ops.aten.silu_backward(grad_out.contiguous(), pre)
        grad_x = grad_pre * weight[:, -1]
        grad_weight = torch.zeros_like(weight)
        grad_weight[:, -1] = (grad_pre * x).sum((0, 1))
        for tap in range(width - 1):
            shift = width - 1 - tap
            if shift < length:
                grad_x[: length - shift].addcmul_(grad_pre[shift:], weight[:, tap])
                grad_weight[:, tap] = (grad_pre[shift:] * x[: length - shift]).sum((0, 1))
        grad_bias = grad_pre.sum((0, 1)) if ctx.has_bias else None
        return grad_x, grad_weight, grad_bias


def causal_conv1d_silu_time_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`silu(causal depthwise conv1d(x))` for time-major `x` `(length, batch, channels)`, `weight` `(channels, width)`,
    `bias` `(channels,)` or None; returns `(length, batch, channels)` in the dtype of `x` (float32 math for half
    precision)."""
    input_dtype = x.dtype
    compute_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
    x, weight = x.to(compute_dtype), weight.to(compute_dtype)
    bias = None if bias is None else bias.to(compute_dtype)
    if _is_tracing():
        length, width = x.shape[0], weight.shape[1]
        out = F.conv1d(x.permute(1, 2, 0), weight[:, None], bias, padding=width - 1, groups=x.shape[-1])
        return F.silu(out[..., :length]).permute(2, 0, 1).to(input_dtype)
    out = _CausalConv1dSiLU.apply(x.contiguous(), weight, bias)
    return out.to(input_dtype)


__all__ = ["selective_scan", "causal_conv1d_silu_time_major", "is_mamba_kernel_available", "mamba_kernels"]
