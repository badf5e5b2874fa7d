"""Hidden states and attention maps follow Transformers v5's output recording (`_can_record_outputs` +
`capture_outputs` / `can_return_tuple`), on all three backbones, and hold what they say they hold: each one is
recomputed here from the model's own layers, one step at a time."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling_dart import DartForImageClassification, DartVideoMambaForVideoClassification
from tests.conftest import tiny_config

BACKBONES = ["vit", "vim", "videomamba"]


def make(backbone: str, **overrides):
    torch.manual_seed(0)
    if backbone == "videomamba":
        model = DartVideoMambaForVideoClassification(tiny_config(backbone=backbone, num_frames=2, **overrides))
        inputs = torch.randn(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    else:
        model = DartForImageClassification(tiny_config(backbone=backbone, **overrides))
        inputs = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return model.eval(), inputs


def embeddings_of(model, inputs):
    if inputs.dim() == 5:
        return model.dart.embed_frames(inputs)[0]
    return model.dart.embeddings(inputs).embeddings


@pytest.mark.parametrize("backbone", BACKBONES)
def test_hidden_states_are_the_residual_stream_layer_by_layer(backbone):
    model, inputs = make(backbone)
    encoder = model.dart.encoder
    with torch.no_grad():
        out = model(inputs, output_hidden_states=True)
        base = model.dart(inputs, output_hidden_states=True)
        stream = [embeddings_of(model, inputs)]
        if backbone == "vit":
            for layer in encoder.layer:
                stream.append(layer(stream[-1]))
            final = encoder.layernorm(stream[-1])
        else:  # pre-norm residual blocks: x_{i+1} = x_i + mixer_i(norm_i(x_i)); final norm_f(x_L)
            for block in encoder.layers:
                normed = F.rms_norm(stream[-1], (stream[-1].shape[-1],), block.norm.weight, block.norm.eps)
                stream.append(stream[-1] + block.mixer(normed))
            final = F.rms_norm(stream[-1], (stream[-1].shape[-1],), encoder.norm_f.weight, encoder.norm_f.eps)
    assert len(out.hidden_states) == len(stream) == model.config.num_hidden_layers + 1
    for i, (recorded, expected) in enumerate(zip(out.hidden_states, stream)):
        torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-5, msg=f"hidden state {i}")
    torch.testing.assert_close(base.last_hidden_state, final, atol=1e-5, rtol=1e-5)
    for recorded, again in zip(out.hidden_states, base.hidden_states):
        torch.testing.assert_close(recorded, again, atol=0, rtol=0)


def test_attentions_are_each_layers_softmax_weights():
    model, inputs = make("vit", attn_implementation="eager")
    with torch.no_grad():
        out = model(inputs, output_hidden_states=True, output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    for layer, hidden, weights in zip(model.dart.encoder.layer, out.hidden_states, out.attentions):
        batch, length, width = hidden.shape
        qkv = layer.attention.qkv(layer.layernorm_before(hidden)).view(batch, length, 3, heads, width // heads)
        query, key = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        expected = torch.softmax(query @ key.transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
        torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_nothing_is_recorded_unless_asked_and_config_defaults_apply(backbone):
    model, inputs = make(backbone)
    with torch.no_grad():
        plain = model(inputs)
        assert plain.hidden_states is None
        model.config.output_hidden_states = True  # the config default, as in every Transformers model
        from_config = model(inputs)
        model.config.output_hidden_states = False
    assert len(from_config.hidden_states) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(from_config.logits, plain.logits, atol=0, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_hidden_states_selected_by_index(backbone):
    """v5 lets `output_hidden_states` name the layers to keep (negative indices count from the end)."""
    model, inputs = make(backbone)
    with torch.no_grad():
        every = model(inputs, output_hidden_states=True).hidden_states
        some = model(inputs, output_hidden_states=[0, -1]).hidden_states
    assert len(some) == len(every) == model.config.num_hidden_layers + 1
    torch.testing.assert_close(some[0], every[0], atol=0, rtol=0)
    torch.testing.assert_close(some[-1], every[-1], atol=0, rtol=0)
    assert all(h is None for h in some[1:-1])


@pytest.mark.parametrize("backbone", BACKBONES)
def test_return_dict_false_and_training_mode(backbone):
    model, inputs = make(backbone, drop_path_rate=0.0)
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        as_dict = model(inputs, labels=labels, output_hidden_states=True)
        as_tuple = model(inputs, labels=labels, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    assert len(as_tuple[2]) == model.config.num_hidden_layers + 1
    model.train()
    out = model(inputs, labels=labels, output_hidden_states=True)
    out.loss.backward()  # the recorded states keep their graph
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1 and out.hidden_states[-1].requires_grad
