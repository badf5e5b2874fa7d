"""`torch.export`: the adaptive tokenizer and all three backbones export with a static and with a dynamic batch
size, and the exported programs reproduce eager mode, geometry included."""

from __future__ import annotations

import pytest
import torch

from modeling_dart import DartForImageClassification, DartVideoMambaForVideoClassification
from tests.conftest import tiny_config

BACKBONES = ["vit", "vim", "videomamba"]


def make(backbone: str):
    torch.manual_seed(0)
    if backbone == "videomamba":
        model = DartVideoMambaForVideoClassification(tiny_config(backbone=backbone, num_frames=2, scorer_trunk_depth=4))
        shape = (2, 3, 64, 64)
    else:
        model = DartForImageClassification(tiny_config(backbone=backbone, scorer_trunk_depth=4))
        shape = (3, 64, 64)
    return model.eval(), shape


def batch(shape, size, seed):
    return torch.randn(size, *shape, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(exported, model, inputs):
    with torch.no_grad():
        got, expected = exported(inputs), model(inputs)
    # a traced graph may order float operations differently from eager (e.g. the scorer trunk's convolutions are not
    # fused the same way): scores agree to ~1e-7, which moves token edges by ~1e-4 pixels at most
    for name, atol in (("logits", 1e-5), ("score_map", 1e-6), ("regions", 1e-3), ("token_edges", 1e-3),
                       ("row_edges", 1e-3)):
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_export_with_a_dynamic_batch_matches_eager(backbone):
    model, shape = make(backbone)
    dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.export.export(model, (batch(shape, 2, 0),), dynamic_shapes=dynamic)
    for size, seed in ((2, 1), (3, 2), (1, 3)):  # the traced size and others
        assert_same_outputs(program.module(), model, batch(shape, size, seed))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_export_with_a_static_batch_matches_eager(backbone):
    model, shape = make(backbone)
    program = torch.export.export(model, (batch(shape, 2, 0),))
    assert_same_outputs(program.module(), model, batch(shape, 2, 4))
    with pytest.raises(Exception, match="batch|size|shape|Guard"):  # a static program keeps its batch size
        program.module()(batch(shape, 3, 5))


def test_eager_mode_still_checks_the_values():
    model, shape = make("vit")
    bad = batch(shape, 2, 0)
    bad[1, 0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match="pixel_values.*NaN"):
        model(bad)


def test_dynamic_batch_survives_the_chunked_cpu_trunk(monkeypatch):
    """Eager CPU inference runs a large trunk a few images at a time (DART-DeiT-S: 2 images of 448). Traced at the
    chunk size, that chunking pinned the batch (DART-DeiT-S exported for ONNX at batch 2 refused batch 8); traced
    graphs must take the whole batch."""
    from modeling_dart import cpu_tuning_dart

    model, shape = make("vit")
    scorer = model.dart.embeddings.scorer
    image_bytes = scorer.widest_activation_bytes_per_pixel * shape[-2] * shape[-1]
    monkeypatch.setattr(cpu_tuning_dart, "TRUNK_CHUNK_BYTES", 2 * image_bytes)  # chunks of 2 images, as DeiT-S
    dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.export.export(model, (batch(shape, 2, 0),), dynamic_shapes=dynamic)
    for size, seed in ((2, 1), (5, 2), (1, 3)):
        assert_same_outputs(program.module(), model, batch(shape, size, seed))


def test_exported_vim_runs_its_recurrences_as_scans():
    """An exported Mamba mixer runs its recurrence as one `torch.ops.higher_order.scan` (both directions are folded
    into one scan; the ONNX exporter turns it into one `Scan` node). The closed-form blocks that compiled graphs use
    made onnxruntime 30x slower than eager."""
    model, shape = make("vim")
    program = torch.export.export(model, (batch(shape, 2, 0),))
    scans = [node for node in program.graph.nodes if node.target is torch.ops.higher_order.scan]
    assert len(scans) == model.config.num_hidden_layers
    assert_same_outputs(program.module(), model, batch(shape, 2, 4))
