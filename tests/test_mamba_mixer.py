"""Tests of the bidirectional Mamba mixer (`modeling_dart.mamba_dart`): the PyTorch selective scan against a plain
sequential float64 reference, gradients, an independent re-implementation of the whole bimamba-v2 mixer, dtypes, the
kernel-path plumbing, and the Vim block (fp32 residual, gradient checkpointing)."""

from __future__ import annotations

import copy
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

if str(pathlib.Path(__file__).resolve().parents[1]) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from modeling_dart import layers_dart, mamba_dart, selective_scan_dart
from modeling_dart.mamba_dart import DartBiMambaMixer, DartMambaAddNorm, DartMambaBlock, DartRMSNorm
from modeling_dart.selective_scan_dart import causal_conv1d_silu_time_major, is_mamba_kernel_available, selective_scan

# ----------------------------------------------------------------------------------------------------------------------
# References written here, independently of the module: a plain loop over time in float64.
# ----------------------------------------------------------------------------------------------------------------------


def reference_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Sequential selective scan in float64. u, delta: (b, E, L); A: (E, N); B, C: (b, N, L) or (b, G, N, L)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per_group = channels // B.shape[1]
    B = B.repeat_interleave(per_group, dim=1)  # (b, E, N, L)
    C = C.repeat_interleave(per_group, dim=1)
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.where(delta <= 20, torch.log1p(torch.exp(delta)), delta)
    state = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    outputs = []
    for t in range(length):
        state = torch.exp(delta[:, :, t, None] * A) * state + delta[:, :, t, None] * B[..., t] * u[:, :, t, None]
        outputs.append((state * C[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y


def reference_bimamba_v2(mixer: DartBiMambaMixer, hidden_states: torch.Tensor, differentiable: bool = False):
    """bimamba v2 written from the description (float64): shared in_proj, one branch per direction, flip, sum, out_proj.

    `differentiable=True` computes with the (float64) mixer's own parameters, so gradients reach them."""
    if differentiable:
        p = dict(mixer.named_parameters())
    else:
        p = {name: value.detach().double() for name, value in mixer.state_dict().items()}
    h = hidden_states.double()
    length = h.shape[1]
    xz = F.linear(h, p["in_proj.weight"], p.get("in_proj.bias")).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    rank, state = mixer.time_step_rank, mixer.state_size

    def branch(x, z, suffix):
        w = p[f"conv1d{suffix}.weight"]
        x = F.silu(F.conv1d(x, w, p.get(f"conv1d{suffix}.bias"), padding=w.shape[-1] - 1, groups=x.shape[1]))
        x = x[..., :length]
        dt, B, C = F.linear(x.transpose(1, 2), p[f"x_proj{suffix}.weight"]).split([rank, state, state], dim=-1)
        delta = F.linear(dt, p[f"dt_proj{suffix}.weight"]).transpose(1, 2)
        A = -torch.exp(p["A_log" if suffix == "" else "A_b_log"])
        D = p["D" if suffix == "" else "D_b"]
        return reference_selective_scan(
            x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D, z, p[f"dt_proj{suffix}.bias"], True
        )

    out = branch(x, z, "") + branch(x.flip(-1), z.flip(-1), "_b").flip(-1)
    if mixer.divide_out:
        out = out / 2
    return F.linear(out.transpose(1, 2), p["out_proj.weight"], p.get("out_proj.bias"))


def random_scan_inputs(batch, channels, length, state, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    return {
        "u": torch.randn(batch, channels, length, generator=g).to(dtype),
        "delta": (torch.randn(batch, channels, length, generator=g) - 1.0).to(dtype),
        "A": -torch.exp(torch.randn(channels, state, generator=g) * 0.5 + 0.5).to(dtype),
        "B": torch.randn(*bc_shape, generator=g).to(dtype),
        "C": torch.randn(*bc_shape, generator=g).to(dtype),
        "D": torch.randn(channels, generator=g).to(dtype),
        "z": torch.randn(batch, channels, length, generator=g).to(dtype),
        "delta_bias": (torch.randn(channels, generator=g) * 0.5).to(dtype),
    }


def perturbed_mixer(seed=0, hidden_size=16, divide_out=True, **kwargs) -> DartBiMambaMixer:
    """A mixer whose forward and backward twins differ (as after training), with non-trivial biases."""
    torch.manual_seed(seed)
    mixer = DartBiMambaMixer(hidden_size, divide_out=divide_out, use_kernels=False, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in mixer.named_parameters():
            if name in ("A_log", "A_b_log", "D", "D_b"):
                param.add_(0.3 * torch.randn(param.shape, generator=g))
            elif name.endswith("bias"):
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    return mixer


def assert_relative_close(actual, expected, rtol):
    actual, expected = actual.double(), expected.double()
    scale = expected.abs().max().clamp_min(1e-12)
    error = (actual - expected).abs().max() / scale
    assert error <= rtol, f"relative error {error:.3e} > {rtol:.1e}"


# ----------------------------------------------------------------------------------------------------------------------
# selective_scan
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 7, 15, 16, 17, 33, 64, 197])
def test_selective_scan_matches_sequential_reference(length):
    inputs = random_scan_inputs(2, 12, length, 5, seed=length)
    expected = reference_selective_scan(**inputs, delta_softplus=True)
    for chunk_size in (None, 16):
        actual = selective_scan(**inputs, delta_softplus=True, chunk_size=chunk_size)
        assert actual.dtype == torch.float32 and actual.shape == expected.shape
        assert_relative_close(actual, expected, 1e-5)


@pytest.mark.parametrize("use_z", [False, True])
@pytest.mark.parametrize("use_D", [False, True])
@pytest.mark.parametrize("use_bias", [False, True])
def test_selective_scan_optional_arguments(use_z, use_D, use_bias):
    inputs = random_scan_inputs(2, 8, 37, 4, seed=3)
    inputs["delta"] = inputs["delta"].abs() * 0.3  # valid time steps without softplus
    if not use_z:
        inputs["z"] = None
    if not use_D:
        inputs["D"] = None
    if not use_bias:
        inputs["delta_bias"] = None
    for softplus in (False, True):
        expected = reference_selective_scan(**inputs, delta_softplus=softplus)
        actual = selective_scan(**inputs, delta_softplus=softplus, chunk_size=8)
        assert_relative_close(actual, expected, 1e-5)


def test_selective_scan_grouped_B_C_and_chunk_sizes():
    inputs = random_scan_inputs(3, 12, 29, 4, groups=2, seed=5)
    expected = reference_selective_scan(**inputs, delta_softplus=True)
    for chunk_size in (1, 2, 4, 7, 29, 100):
        assert_relative_close(selective_scan(**inputs, delta_softplus=True, chunk_size=chunk_size), expected, 1e-5)


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_traced_scan_in_closed_form_blocks_matches_the_reference(monkeypatch, block):
    """The scan that tracing / export / compile use works in closed form over blocks of steps; values and gradients
    must be those of the sequential recurrence, for blocks that split the sequence unevenly, and with decays that
    underflow within a block."""
    monkeypatch.setattr(selective_scan_dart, "_is_tracing", lambda: True)
    monkeypatch.setattr(selective_scan_dart, "_TRACED_BLOCK", block)
    for strong in (False, True):
        inputs = random_scan_inputs(2, 6, 37, 4, groups=2, seed=21, dtype=torch.float64)
        if strong:
            inputs["delta"] = inputs["delta"] * 0 + 30.0
        leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        actual = selective_scan(**leaves, delta_softplus=True)
        expected_leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        expected = reference_selective_scan(**expected_leaves, delta_softplus=True)
        assert torch.isfinite(actual).all()
        assert_relative_close(actual, expected, 1e-10)
        weights = torch.randn(actual.shape, generator=torch.Generator().manual_seed(3), dtype=actual.dtype)
        (actual * weights).sum().backward()
        (expected * weights).sum().backward()
        for name in inputs:
            assert_relative_close(leaves[name].grad, expected_leaves[name].grad, 1e-9)


def test_exported_scan_matches_the_reference(monkeypatch):
    """Under torch.export the recurrence is one `torch.ops.higher_order.scan` over the time steps (the ONNX `Scan`
    node); its values must be those of the sequential recurrence, with decays that underflow too."""
    monkeypatch.setattr(selective_scan_dart, "_is_tracing", lambda: True)
    # the module's own check, not `torch.compiler.is_exporting`: replacing that breaks later compiles in the process
    monkeypatch.setattr(selective_scan_dart, "_is_exporting", lambda: True)
    called = []
    exported = selective_scan_dart._selective_scan_exported
    monkeypatch.setattr(selective_scan_dart, "_selective_scan_exported", lambda *a: called.append(1) or exported(*a))
    for strong in (False, True):
        inputs = random_scan_inputs(2, 6, 37, 4, groups=2, seed=21, dtype=torch.float64)
        if strong:
            inputs["delta"] = inputs["delta"] * 0 + 30.0
        actual = selective_scan(**inputs, delta_softplus=True)
        assert torch.isfinite(actual).all()
        assert_relative_close(actual, reference_selective_scan(**inputs, delta_softplus=True), 1e-10)
        float32 = {k: v.float() for k, v in inputs.items()}
        expected32 = reference_selective_scan(**inputs, delta_softplus=True).float()
        assert_relative_close(selective_scan(**float32, delta_softplus=True), expected32, 1e-5)
    assert len(called) == 4


def test_selective_scan_strong_decay_is_stable():
    """Large time steps (decays far below float32's range over a chunk) must neither overflow nor produce NaN."""
    inputs = random_scan_inputs(1, 4, 40, 3, seed=11)
    inputs["delta"] = inputs["delta"] * 0 + 30.0  # softplus(30 + bias) ~ 30 -> exp(30 * A) underflows
    expected = reference_selective_scan(**inputs, delta_softplus=True)
    actual = selective_scan(**inputs, delta_softplus=True, chunk_size=16)
    assert torch.isfinite(actual).all()
    assert_relative_close(actual, expected, 1e-5)


def test_decays_that_would_be_subnormal_are_flushed_to_zero():
    """Subnormal decays slow every multiply-add of the CPU recurrence; they must become exact zeros, nothing else."""
    exponents = torch.tensor([-148.5, -140.0, -127.0, -126.0, -125.9, -60.0, -1.0, 0.0])
    flushed = selective_scan_dart._exp2_flush_subnormal_(exponents.clone())
    tiny = torch.finfo(torch.float32).tiny
    assert not ((flushed != 0) & (flushed.abs() < tiny)).any()
    assert (flushed[:4] == 0).all()
    torch.testing.assert_close(flushed[4:], torch.exp2(exponents[4:]), atol=0, rtol=1e-6)
    # a scan whose decays all fall in float32's subnormal band still matches the float64 reference
    inputs = random_scan_inputs(1, 4, 60, 3, seed=12)
    inputs["A"] = torch.full((4, 3), -16.0)
    inputs["delta"] = torch.full((1, 4, 60), 6.0)  # exp(-96) ~ 2**-138.5
    ours = {name: tensor.clone().requires_grad_(True) for name, tensor in inputs.items()}
    ref = {name: tensor.double().requires_grad_(True) for name, tensor in inputs.items()}
    grad_out = torch.randn(1, 4, 60, generator=torch.Generator().manual_seed(1))
    actual = selective_scan(**ours, chunk_size=16)
    expected = reference_selective_scan(**ref)
    assert_relative_close(actual, expected, 1e-5)
    (actual * grad_out).sum().backward()
    (expected * grad_out.double()).sum().backward()
    for name in ("u", "B", "C", "D", "z"):
        assert_relative_close(ours[name].grad, ref[name].grad, 1e-4)


def test_selective_scan_gradcheck():
    inputs = random_scan_inputs(2, 4, 11, 3, groups=2, dtype=torch.float64, seed=7)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    tensors = [inputs[name].clone().requires_grad_(True) for name in names]

    def function(*args):
        return selective_scan(*args[:6], z=args[6], delta_bias=args[7], delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(function, tensors, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_selective_scan_gradients_match_reference_float32():
    inputs = random_scan_inputs(2, 8, 50, 4, seed=13)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    ours = {name: inputs[name].clone().requires_grad_(True) for name in names}
    ref = {name: inputs[name].double().requires_grad_(True) for name in names}
    grad_out = torch.randn(2, 8, 50, generator=torch.Generator().manual_seed(0))
    (selective_scan(**ours, delta_softplus=True, chunk_size=16) * grad_out).sum().backward()
    (reference_selective_scan(**ref, delta_softplus=True) * grad_out.double()).sum().backward()
    for name in names:
        assert_relative_close(ours[name].grad, ref[name].grad, 1e-4)


def test_selective_scan_half_precision_is_upcast():
    inputs = random_scan_inputs(2, 8, 21, 4, seed=17)
    expected = reference_selective_scan(**inputs, delta_softplus=True)
    for dtype in (torch.bfloat16, torch.float16):
        actual = selective_scan(**{k: v.to(dtype) for k, v in inputs.items()}, delta_softplus=True)
        assert actual.dtype == dtype
        assert_relative_close(actual, expected, 3e-2)


def test_selective_scan_rejects_bad_shapes():
    inputs = random_scan_inputs(2, 8, 10, 4)
    with pytest.raises(ValueError):
        selective_scan(**{**inputs, "A": inputs["A"][:5]})
    with pytest.raises(ValueError):
        selective_scan(**{**inputs, "B": inputs["B"][..., :9]})
    with pytest.raises(ValueError):
        selective_scan(**{**inputs, "B": inputs["B"].view(2, 1, 4, 10).expand(2, 3, 4, 10)})  # 8 % 3 != 0


@pytest.mark.parametrize("length", [1, 2, 3, 4, 9])
def test_causal_conv_time_major_matches_conv1d_and_gradcheck(length):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(length, 2, 5, generator=g, dtype=torch.float64)  # (L, b, C)
    weight = torch.randn(5, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    expected = F.silu(F.conv1d(x.permute(1, 2, 0), weight[:, None], bias, padding=3, groups=5)[..., :length])
    torch.testing.assert_close(causal_conv1d_silu_time_major(x, weight, bias), expected.permute(2, 0, 1))
    torch.testing.assert_close(
        causal_conv1d_silu_time_major(x, weight, None),
        F.silu(F.conv1d(x.permute(1, 2, 0), weight[:, None], None, padding=3, groups=5)[..., :length]).permute(2, 0, 1),
    )
    inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    assert torch.autograd.gradcheck(causal_conv1d_silu_time_major, inputs)


# ----------------------------------------------------------------------------------------------------------------------
# DartBiMambaMixer
# ----------------------------------------------------------------------------------------------------------------------

ORIGINAL_MIXER_KEYS = {  # VideoMamba / Vim key names and shapes for hidden 192 (d_inner 384, dt_rank 12, d_state 16)
    "A_log": (384, 16),
    "D": (384,),
    "A_b_log": (384, 16),
    "D_b": (384,),
    "in_proj.weight": (768, 192),
    "conv1d.weight": (384, 1, 4),
    "conv1d.bias": (384,),
    "x_proj.weight": (44, 384),
    "dt_proj.weight": (384, 12),
    "dt_proj.bias": (384,),
    "conv1d_b.weight": (384, 1, 4),
    "conv1d_b.bias": (384,),
    "x_proj_b.weight": (44, 384),
    "dt_proj_b.weight": (384, 12),
    "dt_proj_b.bias": (384,),
    "out_proj.weight": (192, 384),
}


def test_mixer_parameter_names_match_original_checkpoints():
    mixer = DartBiMambaMixer(192)
    shapes = {name: tuple(t.shape) for name, t in mixer.state_dict().items()}
    assert shapes == ORIGINAL_MIXER_KEYS
    block = DartMambaBlock(192)
    assert {f"mixer.{k}" for k in ORIGINAL_MIXER_KEYS} | {"norm.weight"} == set(block.state_dict())


def test_mixer_initialisation():
    torch.manual_seed(0)
    mixer = DartBiMambaMixer(32, state_size=8)
    expected_A_log = torch.log(torch.arange(1, 9, dtype=torch.float32)).expand(64, 8)
    for A_log, D, dt_proj in ((mixer.A_log, mixer.D, mixer.dt_proj), (mixer.A_b_log, mixer.D_b, mixer.dt_proj_b)):
        torch.testing.assert_close(A_log.detach(), expected_A_log)
        torch.testing.assert_close(D.detach(), torch.ones(64))
        dt = F.softplus(dt_proj.bias.detach())
        assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
        bound = mixer.time_step_rank**-0.5
        assert dt_proj.weight.abs().max() <= bound
    assert mixer.time_step_rank == 2 and mixer.intermediate_size == 64
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None
    # out_proj rescaling for deep stacks, and loaded parameters are not re-initialised.
    before = mixer.out_proj.weight.detach().abs().max()
    mixer._init_mamba_weights(num_hidden_layers=16)
    assert mixer.out_proj.weight.detach().abs().max() <= before / 4 * 1.01
    mixer.D._is_hf_initialized = True
    with torch.no_grad():
        mixer.D.fill_(3.0)
    mixer._init_mamba_weights()
    assert torch.all(mixer.D == 3.0)


@pytest.mark.parametrize("divide_out", [True, False])
@pytest.mark.parametrize("length", [1, 6, 41])
def test_mixer_matches_independent_reference(divide_out, length):
    mixer = perturbed_mixer(seed=length, hidden_size=16, divide_out=divide_out)
    hidden = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(length))
    expected = reference_bimamba_v2(mixer, hidden)
    with torch.no_grad():
        assert_relative_close(mixer(hidden), expected, 1e-5)
        assert_relative_close(mixer.double()(hidden.double()), expected, 1e-10)


def test_mixer_with_biases_and_other_sizes():
    mixer = perturbed_mixer(seed=2, hidden_size=24, use_bias=True, state_size=6, conv_kernel=3, expand=1)
    with torch.no_grad():
        mixer.out_proj.bias.normal_()
        mixer.in_proj.bias.normal_()
    hidden = torch.randn(3, 13, 24)
    with torch.no_grad():
        assert_relative_close(mixer(hidden), reference_bimamba_v2(mixer, hidden), 1e-5)


def test_mixer_directions_are_not_interchangeable():
    """Swapping each forward parameter with its `*_b` twin must change the output (and break the reference match)."""
    mixer = perturbed_mixer(seed=4)
    hidden = torch.randn(2, 23, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = reference_bimamba_v2(mixer, hidden).float()
        assert_relative_close(mixer(hidden), reference, 1e-5)
        for forward_name, backward_name in [
            ("A_log", "A_b_log"),
            ("D", "D_b"),
            ("conv1d.weight", "conv1d_b.weight"),
            ("conv1d.bias", "conv1d_b.bias"),
            ("x_proj.weight", "x_proj_b.weight"),
            ("dt_proj.weight", "dt_proj_b.weight"),
            ("dt_proj.bias", "dt_proj_b.bias"),
        ]:
            swapped = copy.deepcopy(mixer)
            state = swapped.state_dict()
            state[forward_name], state[backward_name] = state[backward_name].clone(), state[forward_name].clone()
            swapped.load_state_dict(state)
            difference = (swapped(hidden) - reference).abs().max() / reference.abs().max()
            assert difference > 1e-4, f"swapping {forward_name} <-> {backward_name} went unnoticed ({difference:.2e})"


def test_mixer_divide_out_halves_the_sum():
    mixer = perturbed_mixer(seed=5, divide_out=True)
    summing = copy.deepcopy(mixer)
    summing.divide_out = False
    hidden = torch.randn(1, 9, 16)
    with torch.no_grad():
        torch.testing.assert_close(2 * mixer(hidden), summing(hidden), rtol=1e-5, atol=1e-6)


def test_mixer_backward_float32_matches_reference():
    mixer = perturbed_mixer(seed=6)
    reference = copy.deepcopy(mixer).double()
    hidden = torch.randn(2, 30, 16, generator=torch.Generator().manual_seed(2))
    hidden_ref = hidden.double().requires_grad_(True)
    hidden = hidden.clone().requires_grad_(True)
    mixer(hidden).square().sum().backward()
    reference_bimamba_v2(reference, hidden_ref, differentiable=True).square().sum().backward()
    assert_relative_close(hidden.grad, hidden_ref.grad, 1e-4)
    reference_params = dict(reference.named_parameters())
    for name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert_relative_close(param.grad, reference_params[name].grad, 1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixer_half_precision_on_cpu_is_upcast(dtype):
    """Half precision works on CPU: the scan runs in float32 internally; outputs stay close to float32."""
    mixer = perturbed_mixer(seed=8)
    hidden = torch.randn(2, 19, 16, generator=torch.Generator().manual_seed(3))
    expected = mixer(hidden).detach()
    half_mixer = copy.deepcopy(mixer).to(dtype)
    half_hidden = hidden.to(dtype).requires_grad_(True)
    output = half_mixer(half_hidden)
    assert output.dtype == dtype
    assert torch.isfinite(output).all()
    assert_relative_close(output, expected, 5e-2)
    output.float().square().sum().backward()
    assert half_hidden.grad.dtype == dtype and torch.isfinite(half_hidden.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in half_mixer.parameters())


def test_traceable_formulation_matches(monkeypatch):
    """Under torch.export / torch.compile / jit tracing, out-of-place formulations replace the autograd functions;
    they must give the same values and gradients."""
    mixer = perturbed_mixer(seed=14)
    hidden = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(4))

    def run():
        mixer.zero_grad()
        x = hidden.clone().requires_grad_(True)
        out = mixer(x)
        out.square().sum().backward()
        return [out.detach(), x.grad] + [p.grad.clone() for p in mixer.parameters()]

    expected = run()
    monkeypatch.setattr(selective_scan_dart, "_is_tracing", lambda: True)
    for a, b in zip(run(), expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_mixer_exports():
    mixer = perturbed_mixer(seed=15).eval()
    hidden = torch.randn(2, 9, 16)
    exported = torch.export.export(mixer, (hidden,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(hidden), mixer(hidden), rtol=1e-5, atol=1e-6)


def test_mixer_uses_pytorch_path_on_cpu():
    mixer = DartBiMambaMixer(16, use_kernels=True)
    assert not mixer._should_use_kernels(torch.zeros(1, 3, 16))
    assert isinstance(is_mamba_kernel_available(), bool)


# ----------------------------------------------------------------------------------------------------------------------
# Kernel path
# ----------------------------------------------------------------------------------------------------------------------


def _fake_kernel_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Stand-in with the signature and layout rules of mamba_ssm's `selective_scan_fn` (contiguous inputs, B/C grouped
    as (batch, groups, state, length), A/D/delta_bias float32)."""
    assert u.is_contiguous() and delta.is_contiguous() and B.is_contiguous() and C.is_contiguous()
    assert B.dim() == 4 and A.dtype == D.dtype == delta_bias.dtype == torch.float32
    return reference_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(u.dtype)


def _fake_kernel_causal_conv1d(x, weight, bias=None, activation=None):
    assert weight.dim() == 2 and activation == "silu"
    return F.silu(F.conv1d(x, weight[:, None], bias, padding=weight.shape[-1] - 1, groups=x.shape[1])[..., : x.shape[-1]])


def test_kernel_path_plumbing_with_stand_in_kernels(monkeypatch):
    """The kernel branch of `forward` (argument order, layouts, dtypes) against the PyTorch path, on CPU."""
    mixer = perturbed_mixer(seed=9, divide_out=False)
    hidden = torch.randn(2, 17, 16)
    with torch.no_grad():
        expected = mixer(hidden)
    monkeypatch.setattr(selective_scan_dart, "_kernel_selective_scan", _fake_kernel_selective_scan)
    monkeypatch.setattr(selective_scan_dart, "_kernel_causal_conv1d", _fake_kernel_causal_conv1d)
    monkeypatch.setattr(DartBiMambaMixer, "_should_use_kernels", lambda self, hidden_states: True)
    with torch.no_grad():
        torch.testing.assert_close(mixer(hidden), expected, rtol=1e-5, atol=1e-6)


requires_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and is_mamba_kernel_available()),
    reason="kernel path needs a CUDA device and the mamba_ssm package (selective_scan_fn)",
)


@requires_kernels
@pytest.mark.parametrize("divide_out", [True, False])
def test_kernel_path_matches_pytorch_path(divide_out):
    mixer = perturbed_mixer(seed=10, hidden_size=64, divide_out=divide_out).cuda()
    kernel_mixer = copy.deepcopy(mixer)
    kernel_mixer.use_kernels = True
    torch_mixer = copy.deepcopy(mixer)
    torch_mixer.use_kernels = False
    hidden = torch.randn(2, 197, 64, device="cuda")
    hidden_kernel = hidden.clone().requires_grad_(True)
    hidden_torch = hidden.clone().requires_grad_(True)
    assert kernel_mixer._should_use_kernels(hidden_kernel) and not torch_mixer._should_use_kernels(hidden_torch)
    out_kernel = kernel_mixer(hidden_kernel)
    out_torch = torch_mixer(hidden_torch)
    assert_relative_close(out_kernel, out_torch, 1e-3)
    grad = torch.randn_like(out_torch)
    (out_kernel * grad).sum().backward()
    (out_torch * grad).sum().backward()
    assert_relative_close(hidden_kernel.grad, hidden_torch.grad, 1e-3)
    torch_params = dict(torch_mixer.named_parameters())
    for name, param in kernel_mixer.named_parameters():
        assert_relative_close(param.grad, torch_params[name].grad, 1e-3)


@requires_kernels
def test_kernel_scan_matches_pytorch_scan():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    inputs = {k: v.cuda() for k, v in random_scan_inputs(2, 64, 100, 16, groups=2, seed=12).items()}
    expected = selective_scan(**inputs, delta_softplus=True)
    actual = selective_scan_fn(**{k: v.contiguous() for k, v in inputs.items()}, delta_softplus=True)
    assert_relative_close(actual, expected, 1e-3)


# ----------------------------------------------------------------------------------------------------------------------
# Norm and block
# ----------------------------------------------------------------------------------------------------------------------


def test_rms_norm():
    norm = DartRMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 8)
    expected = x.double() / torch.sqrt(x.double().square().mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-6, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_block_residual_semantics():
    torch.manual_seed(0)
    block = DartMambaBlock(16, divide_out=True).eval()
    with torch.no_grad():
        block.norm.weight.normal_()
    embeddings = torch.randn(2, 11, 16)
    with torch.no_grad():
        hidden, residual = block(embeddings)  # first block: the residual is the input itself
        torch.testing.assert_close(residual, embeddings)
        torch.testing.assert_close(hidden, block.mixer(DartRMSNorm.forward(block.norm, embeddings)))
        hidden2, residual2 = block(hidden, residual)
        torch.testing.assert_close(residual2, hidden + residual)
        torch.testing.assert_close(hidden2, block.mixer(DartRMSNorm.forward(block.norm, hidden + residual)))
        normed, _ = block.norm(hidden2, residual2)
        torch.testing.assert_close(normed, DartRMSNorm.forward(block.norm, hidden2 + residual2))

    # bfloat16 model: residual stream stays float32, hidden states in bfloat16.
    bf16_block = copy.deepcopy(block).to(torch.bfloat16)
    with torch.no_grad():
        hidden, residual = bf16_block(embeddings.bfloat16())
        assert residual.dtype == torch.float32 and hidden.dtype == torch.bfloat16
        hidden, residual = bf16_block(hidden, residual)
        assert residual.dtype == torch.float32 and hidden.dtype == torch.bfloat16
    no_fp32 = DartMambaBlock(16, residual_in_fp32=False).to(torch.bfloat16)
    with torch.no_grad():
        _, residual = no_fp32(*no_fp32(embeddings.bfloat16()))
    assert residual.dtype == torch.bfloat16


def test_block_drop_path_only_in_training():
    torch.manual_seed(0)
    block = DartMambaBlock(16, drop_path=0.5)
    hidden, residual = torch.randn(8, 5, 16), torch.randn(8, 5, 16)
    block.eval()
    with torch.no_grad():
        _, eval_residual = block(hidden, residual)
    torch.testing.assert_close(eval_residual, hidden + residual)
    block.train()
    with torch.no_grad():
        _, train_residual = block(hidden, residual)
    per_sample = (train_residual - residual).flatten(1)
    dropped = per_sample.abs().amax(1) == 0
    kept = torch.isclose(per_sample, 2 * hidden.flatten(1)).all(1)
    assert torch.all(dropped | kept) and dropped.any() and kept.any()


def test_block_gradient_checkpointing():
    from transformers import PreTrainedConfig, PreTrainedModel

    class TinyConfig(PreTrainedConfig):
        model_type = "tiny_dart_mamba_test"

    class TinyMambaStack(PreTrainedModel):
        config_class = TinyConfig
        supports_gradient_checkpointing = True

        def __init__(self, config):
            super().__init__(config)
            self.layers = torch.nn.ModuleList([DartMambaBlock(16, layer_idx=i) for i in range(3)])
            self.norm_f = DartMambaAddNorm(16)
            self.post_init()

        def forward(self, hidden_states):
            residual = None
            for layer in self.layers:
                hidden_states, residual = layer(hidden_states, residual)
            return self.norm_f(hidden_states, residual)[0]

    torch.manual_seed(0)
    model = TinyMambaStack(TinyConfig()).train()
    inputs = torch.randn(2, 9, 16)

    def gradients():
        model.zero_grad()
        x = inputs.clone().requires_grad_(True)
        model(x).square().mean().backward()
        return [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    for kwargs in ({"use_reentrant": False}, {"use_reentrant": True}):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        assert all(layer.gradient_checkpointing for layer in model.layers)
        checkpointed = gradients()
        for a, b in zip(plain, checkpointed):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        model.activation_checkpointing_disable()


def test_mixer_odd_lengths_batch_one_and_length_one():
    mixer = perturbed_mixer(seed=12)
    for batch, length in ((1, 1), (1, 2), (3, 1), (2, 5), (1, 65)):
        hidden = torch.randn(batch, length, 16)
        with torch.no_grad():
            assert_relative_close(mixer(hidden), reference_bimamba_v2(mixer, hidden), 1e-5)


def test_module_imports_alone_without_kernels():
    """The files are Hub remote code: the scan must load on its own, and the mixer with only its sibling scan module,
    with mamba_ssm / causal_conv1d unimportable."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp()
    package = pathlib.Path(folder) / "standalone_mamba"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in (mamba_dart, selective_scan_dart, layers_dart):
        shutil.copy(module.__file__, package)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {folder!r})\n"
        "sys.modules['mamba_ssm'] = None\n"
        "sys.modules['causal_conv1d'] = None\n"
        "from standalone_mamba import mamba_dart, selective_scan_dart\n"
        "assert selective_scan_dart.is_mamba_kernel_available() is False\n"
        "import torch\n"
        "print(mamba_dart.DartBiMambaMixer(8)(torch.randn(1, 3, 8)).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    shutil.rmtree(folder)
    assert result.returncode == 0, result.stderr
    assert "torch.Size([1, 3, 8])" in result.stdout
    # What Transformers' remote-code loader will require (imports inside try blocks are optional).
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    assert set(get_imports(mamba_dart.__file__)) - {"__future__", "math"} == {"torch", "transformers"}
    assert set(get_imports(selective_scan_dart.__file__)) - {"__future__", "math"} == {"torch"}
    assert get_relative_imports(selective_scan_dart.__file__) == []
    assert sorted(get_relative_imports(mamba_dart.__file__)) == ["layers_dart", "selective_scan_dart"]
