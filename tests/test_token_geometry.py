"""`config.token_geometry_embedding`: each token's centre, size and rank embedded and added to it. The features are
checked against values worked out by hand, the zero start against a model without the option (vit, vim,
videomamba), the gradients against finite differences, and the save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch

from modeling_dart import DartConfig, DartForImageClassification, DartVideoMambaForVideoClassification
from modeling_dart.embeddings_dart import DartTokenGeometryEmbedding
from tests.conftest import tiny_config


def test_features_of_the_uniform_grid_match_hand_values():
    """16 uniform tokens on a 64-pixel input: a 4x4 grid of 16-pixel squares."""
    config = tiny_config(scorer="uniform", token_geometry_embedding=True)
    model = DartForImageClassification(config).eval()
    with torch.no_grad():
        out = model.dart.embeddings(torch.randn(1, 3, 64, 64))
    features = DartTokenGeometryEmbedding.features(out.regions, 64, 64)[0]
    assert features.shape == (16, 45)
    size = 1.0 + math.log(0.25) / math.log(1e4)  # every side is a quarter of the input
    for n in range(16):
        row, col = divmod(n, 4)
        raw = [(16 * col + 8) / 64, (16 * row + 8) / 64, size, size, (n + 0.5) / 16]
        expected = raw.copy()
        expected += [math.sin(math.pi * 2**k * f) for f in raw for k in range(4)]
        expected += [math.cos(math.pi * 2**k * f) for f in raw for k in range(4)]
        torch.testing.assert_close(features[n], torch.tensor(expected), atol=1e-5, rtol=0)


def test_size_feature_is_clamped_for_degenerate_tokens():
    regions = torch.tensor([[[10.0, 10.0, 10.0, 74.0]]])  # zero width, full height of a 64-pixel input
    raw = DartTokenGeometryEmbedding.features(regions, 64, 64)[0, 0, :5]
    assert raw[2].item() == pytest.approx(0.0) and raw[3].item() == pytest.approx(1.0)
    assert torch.isfinite(DartTokenGeometryEmbedding.features(regions, 64, 64)).all()


def _pair(model_class, **overrides):
    """The same weights without and with the option (the geometry layer as a fresh model initialises it)."""
    torch.manual_seed(0)
    plain = model_class(tiny_config(**overrides)).eval()
    torch.manual_seed(0)
    geometric = model_class(tiny_config(token_geometry_embedding=True, **overrides)).eval()
    missing = geometric.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(k for k in geometric.state_dict() if ".geometry." in k) and missing
    return plain, geometric


@pytest.mark.parametrize(
    "model_class, overrides, shape",
    [
        (DartForImageClassification, dict(backbone="vit"), (2, 3, 64, 64)),
        (DartForImageClassification, dict(backbone="vim"), (2, 3, 64, 64)),
        (DartVideoMambaForVideoClassification, dict(backbone="videomamba", num_frames=3), (2, 3, 3, 64, 64)),
    ],
)
def test_a_new_model_starts_exactly_as_one_without_it(model_class, overrides, shape):
    plain, geometric = _pair(model_class, **overrides)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(x).logits, geometric(x).logits)
        torch.nn.init.normal_(geometric.dart.embeddings.geometry.weight, std=0.5)  # trained: it changes the output
        assert not torch.allclose(plain(x).logits, geometric(x).logits, atol=1e-4)


def test_gradients_reach_the_layer_and_through_the_edges_the_scorer():
    torch.manual_seed(0)
    model = DartForImageClassification(
        tiny_config(token_geometry_embedding=True, scorer_head="saliency", scorer_trunk="efficientnet_lite0")
    )
    pixels, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 1])
    model(pixels, labels=labels).loss.backward()
    geometry = model.dart.embeddings.geometry
    assert geometry.weight.grad.abs().sum() > 0 and geometry.bias.grad.abs().sum() > 0
    # with the patch content and position table cut off, the scorer still learns from the geometry alone
    model.zero_grad()
    torch.nn.init.normal_(geometry.weight, std=0.5)
    embeddings = model.dart.embeddings
    with torch.no_grad():
        embeddings.projection.weight.zero_()
        embeddings.position_embeddings.zero_()
    model(pixels, labels=labels).loss.backward()
    assert model.dart.embeddings.scorer.log_temperature.grad.abs() > 0


def test_geometry_gradcheck_through_the_token_edges():
    """d(geometry embedding) / d(score map), in float64, against finite differences."""
    torch.manual_seed(0)
    config = tiny_config(scorer="uniform", token_geometry_embedding=True, hidden_size=8, num_attention_heads=2,
                         num_tokens=9)
    embeddings = DartForImageClassification(config).dart.embeddings.double()
    torch.nn.init.normal_(embeddings.geometry.weight, std=0.5)
    with torch.no_grad():
        embeddings.projection.weight.zero_()
        embeddings.projection.bias.zero_()
        embeddings.position_embeddings.zero_()
        embeddings.cls_token.zero_()
    pixels = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    scores = (torch.rand(1, 4, 4, dtype=torch.float64) + 0.5).requires_grad_(True)

    def geometry_of(score_map):  # with no patch content and no positions, the tokens are their geometry alone
        return embeddings(pixels, score_map=score_map).embeddings

    assert torch.autograd.gradcheck(geometry_of, (scores,), eps=1e-6, atol=1e-5)


def test_batch_independence_and_determinism():
    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(token_geometry_embedding=True)).eval()
    torch.nn.init.normal_(model.dart.embeddings.geometry.weight, std=0.5)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model(x).logits
        alone = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
        again = model(x).logits
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert torch.equal(together, again)


def test_saved_and_loaded_with_its_config(tmp_path):
    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(token_geometry_embedding=True)).eval()
    torch.nn.init.normal_(model.dart.embeddings.geometry.weight, std=0.5)
    model.save_pretrained(tmp_path)
    loaded = DartForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.token_geometry_embedding is True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_released_configs_leave_it_off_and_bad_values_are_refused():
    assert DartConfig().token_geometry_embedding is False
    assert DartForImageClassification(tiny_config()).dart.embeddings.geometry is None
    with pytest.raises(TypeError, match="token_geometry_embedding"):
        DartConfig(token_geometry_embedding="yes")


def test_one_compiled_graph_and_eager_outputs(backbone="vit"):
    """`torch.compile(fullgraph=True)` keeps one graph with the option on, and the compiled model matches eager (the
    option lives in the embeddings that every backbone shares; the vim and videomamba graphs are in test_compile)."""
    torch.manual_seed(0)
    model = DartForImageClassification(tiny_config(backbone=backbone, token_geometry_embedding=True,
                                                   scorer_trunk_depth=2, num_hidden_layers=1, num_tokens=4)).eval()
    torch.nn.init.normal_(model.dart.embeddings.geometry.weight, std=0.5)
    inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(inputs)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    with torch.no_grad():
        got, expected = torch.compile(model, fullgraph=True)(inputs).logits, model(inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
