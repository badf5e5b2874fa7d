"""`torch.compile(model, fullgraph=True)` on CPU (inductor): one graph, no graph break, for all three backbones in
eval and in training mode, and the compiled model gives eager's outputs (and gradients) within 1e-4.

Compiling is the cost here (inductor writes and builds a C++ kernel for every fused operation group, on a cold cache),
so the models are the smallest that still run every stage.
"""

from __future__ import annotations

import pytest
import torch

from modeling_dart import DartForImageClassification, DartVideoMambaForVideoClassification
from tests.conftest import tiny_config

BACKBONES = ["vit", "vim", "videomamba"]


def make(backbone: str):
    torch.manual_seed(0)
    # the smallest model that runs every stage (the compile time grows with the graph: the Mamba scans unroll over
    # the sequence): a 2-entry scorer trunk, one layer, 4 tokens (per frame), 2 frames
    options = dict(backbone=backbone, scorer_trunk_depth=2, num_hidden_layers=1, num_tokens=4, drop_path_rate=0.0)
    if backbone == "videomamba":
        model = DartVideoMambaForVideoClassification(tiny_config(num_frames=2, **options))
        inputs = torch.randn(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    else:
        model = DartForImageClassification(tiny_config(**options))
        inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model, inputs, torch.tensor([1, 3])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_one_graph_without_breaks_in_eval_and_training(backbone):
    model, inputs, labels = make(backbone)
    for training in (False, True):
        torch._dynamo.reset()
        model.train(training)
        explanation = torch._dynamo.explain(model)(inputs, labels=labels)
        reasons = [reason.reason.splitlines()[0] for reason in explanation.break_reasons]
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), (training, reasons)


def assert_close(got, expected, name, tolerance=1e-4, scale=None):
    """Within `tolerance` of `scale` (default: the expected values' own magnitude; absolute for values of order one)."""
    scale = max(1.0, expected.abs().max().item() if scale is None else scale)
    torch.testing.assert_close(got, expected, atol=tolerance * scale, rtol=0, msg=lambda m: f"{name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_inductor_matches_eager_in_eval_and_training(backbone):
    model, inputs, labels = make(backbone)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # inductor, the default backend

    model.eval()
    with torch.no_grad():
        got, expected = compiled(inputs), model(inputs)
    for name in ("logits", "score_map", "regions"):
        assert_close(got[name], expected[name], name)

    model.train()  # one training step: loss, logits and every gradient
    grads = []
    for run in (compiled, model):
        model.zero_grad()
        out = run(inputs, labels=labels)
        out.loss.backward()
        grads.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (got, got_grads), (expected, expected_grads) = grads
    assert_close(got.loss, expected.loss, "loss")
    assert_close(got.logits, expected.logits, "training logits")
    assert got_grads.keys() == expected_grads.keys() and len(got_grads) > 10
    assert any("scorer.head" in name for name in got_grads)  # the gradient reaches the scorer through the tokens
    # gradients within 1e-4 of the model's gradient scale: the v1 score head's last bias, for one, has no effect
    # (standardisation removes it), so its gradient is 0 up to the rounding of the large terms that cancel in it
    scale = max(grad.abs().max().item() for grad in expected_grads.values())
    for name in expected_grads:
        assert_close(got_grads[name], expected_grads[name], f"grad {name}", scale=scale)


def test_compiled_squeeze_excitation_is_eager_bit_for_bit():
    """The trunk's squeeze-excitation accumulates its global mean and its two small products in float64, so that
    inductor's reduction order cannot change the result: in float32 the compiled blocks moved DART-DeiT-S's trunk
    features by 2e-5 (relative), and the token edges with them, while its convolutions agree bit for bit."""
    from modeling_dart.trunks_dart import SqueezeExcitation

    torch.manual_seed(0)
    block = SqueezeExcitation(120, 32).eval()
    inputs = torch.randn(2, 120, 28, 28, generator=torch.Generator().manual_seed(2)) * 4
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(inputs.clone()), block(inputs.clone()))


def test_compile_benchmark_breakdown_finds_the_library_kernels():
    """`benchmarks/benchmark_compile.py --breakdown` bounds the compiled speed-up by the time eager spends in library
    kernels, found by their profiler names: a name that stops matching would move their time to "everything else"
    and inflate the bound."""
    import sys

    from tests.conftest import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        import benchmark_compile
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(256, 256), torch.nn.Conv2d(8, 16, 3)
    tokens, image = torch.randn(64, 256), torch.randn(2, 8, 32, 32)
    query = torch.randn(1, 2, 16, 8)
    with torch.no_grad():
        split = benchmark_compile.kernel_breakdown(
            lambda: (torch.nn.functional.gelu(linear(tokens)), conv(image),
                     torch.nn.functional.scaled_dot_product_attention(query, query, query)))
    assert split["matrix products"] > 0 and split["convolutions"] > 0 and split["attention"] > 0, split
    assert split["everything else"] > 0, split  # the gelu
