"""Bidirectional Mamba ("bimamba v2") for the Vim / VideoMamba backbones of DART.

One mixer, two interchangeable execution paths behind the same `forward`:

- **Kernel path**: the `mamba_ssm` selective-scan CUDA kernel (and `causal_conv1d` when installed), used when the tensors
  are on CUDA, the packages import and `use_kernels=True`.
- **PyTorch path**: any device and dtype, forward and backward. The selective scan is a custom autograd function that
  walks the sequence in cache-sized time chunks, keeps no autograd graph per time step, stores only one state per chunk
  boundary for the backward pass and recomputes the rest there (the strategy of the CUDA kernel). The forward and the
  backward (flipped) scan directions are folded into a single scan over `2 * intermediate_size` channels with two groups
  of `B` / `C`, so every operation runs once for both directions.

  Why a sequential recurrence inside each chunk rather than a closed form (cumulative log-decays and a masked
  `exp(segsum)` matrix, as in Mamba-2's SSD): Mamba-1 decays differ per channel AND per state, so the closed form needs a
  `(batch, channels, chunk, chunk, state)` tensor per chunk, i.e. `chunk` times the work and memory of the recurrence
  itself (measured slower on CPU for every chunk size). The recurrence costs one fused `addcmul_` per time step on a
  `(batch, state, channels)` slice; everything else (decays, inputs, outputs, all gradient reductions) runs once per
  chunk as a few large vectorised operations. It is numerically the plain recurrence: no exp of positive numbers, no
  overflow for any time step.

Parameter names follow the original code (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`, their `*_b` backward
twins and `out_proj`; blocks hold `mixer` and `norm`), so converting an original checkpoint is a prefix rename.

This file is shipped as Hub remote code: it imports only torch, transformers and (optionally) the kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer


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


def is_mamba_kernel_available() -> bool:
    """Whether the `mamba_ssm` selective-scan kernel imports (the kernel path then runs for CUDA tensors)."""
    return _kernel_selective_scan is not None


def _exp2_flush_subnormal_(log2_decay: torch.Tensor) -> torch.Tensor:
    """In place `2 ** x`, giving exactly 0 where the result would be subnormal (x <= -126 in float32).

    Subnormal decays (strongly decaying channels over long sequences) make every multiply-add of the recurrence take a
    slow microcode path on x86 (1.7x slower scans measured); a decay below 2**-126 changes no state by more than that
    factor, so it is flushed to zero here instead of relying on the global `torch.set_flush_denormal`.
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

    The closed-form blocks of `_selective_scan_functional` are fine for the compiler, but exported to ONNX they were
    the bottleneck: their pairwise decays (`block` x `block` times the states) made onnxruntime run DART-Vim-Ti 30x
    slower than eager PyTorch, and the export took minutes (measured in `benchmarks/benchmark_onnx.py`).
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
        if torch.compiler.is_exporting():
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
        if _kernel_causal_conv1d is not None and self.conv_kernel in _KERNEL_CONV_WIDTHS:
            x = _kernel_causal_conv1d(x, conv_weight, conv_bias, activation="silu")
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
        y = _kernel_selective_scan(
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


class DartDropPath(nn.Module):
    """Stochastic depth: in training, zeroes whole samples with probability `drop_prob` and rescales the others by
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


def add_and_norm(
    hidden_states: torch.Tensor,
    residual: torch.Tensor | None,
    norm: DartRMSNorm,
    residual_in_fp32: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm, with the semantics of mamba_ssm's fused `rms_norm_fn(..., prenorm=True)`.

    `residual = hidden_states + residual` (or `hidden_states` when `residual` is None) is formed in float32, normalised
    in float32, and returned in float32 if `residual_in_fp32` (else in the dtype of `hidden_states`); the normalised
    states come back in the dtype of `norm.weight`. In float32 this equals `norm(residual)`.
    Use it for the final `norm_f` of a model (ignore the returned residual there).

    Args:
        hidden_states (`torch.Tensor` of shape `(batch, length, hidden_size)`): branch output (e.g. the last mixer).
        residual (`torch.Tensor` of the same shape, *optional*): running residual stream.
        norm (`DartRMSNorm`): the normalisation.
        residual_in_fp32 (`bool`): keep the returned residual in float32.

    Returns:
        `(normalized, residual)`, both `(batch, length, hidden_size)`.
    """
    summed = hidden_states.float() if residual is None else hidden_states.float() + residual.float()
    normalized = norm(summed).to(norm.weight.dtype)
    residual = summed if residual_in_fp32 else summed.to(hidden_states.dtype)
    return normalized, residual


class DartMambaBlock(GradientCheckpointingLayer):
    """Vim / VideoMamba block: `residual = drop_path(hidden_states) + residual`, `hidden_states = norm(residual)`,
    `hidden_states = mixer(hidden_states)`. The model applies the final add + norm (see `add_and_norm`).

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
        self.norm = DartRMSNorm(hidden_size, eps=layer_norm_epsilon)
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
        hidden_states, residual = add_and_norm(hidden_states, residual, self.norm, self.residual_in_fp32)
        hidden_states = self.mixer(hidden_states)
        return hidden_states, residual
