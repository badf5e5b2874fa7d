"""The reshaper classifier (`DartReshaperForImageClassification`, #25 item 6) compiled and exported as token DART is:
`torch.compile(fullgraph=True)` traces one graph without breaks (eval and training) and gives eager's outputs and
gradients; inductor compiles an RMT behind a learned reshaper; `torch.export` with a dynamic batch reproduces eager,
the warp included; `conversion/export_onnx.py` exports a saved reshaper folder and onnxruntime matches PyTorch (logits
within 1e-4, the warp's edges within `REGION_ATOL_PIXELS`), and a reshaper in front of a model that is no image
classifier is refused before anything is exported.

The models are tiny (64-pixel inputs warped to 32x32 from a 4x4 score grid, a 2- or 4-entry MobileNetV3-Small trunk);
the weights of their classifiers are redrawn with variance 1 / fan-in, so that the logits are of order one and vary
with the input, and the tolerances bite.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os

import pytest
import torch

from modeling_dart import (
    DartImageProcessor,
    DartReshaperConfig,
    DartReshaperForImageClassification,
    RmtConfig,
)

KINDS = ["rmt", "convnext"]
LABELS = {i: f"class_{i}" for i in range(5)}
WARP = ("warped_pixel_values", "row_edges", "col_edges", "score_map")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the models are small, and two threads on a busy two-core machine wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def classifier_config(kind: str):
    from transformers import ConvNextConfig

    if kind == "convnext":
        return ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], id2label=LABELS)
    if kind == "rmt_2_stages":  # decomposed retention, then whole-map retention with layerscale: fewer kernels
        return RmtConfig(embed_dims=[8, 16], depths=[1, 1], num_heads=[2, 2], heads_ranges=[4, 4], mlp_ratios=[2, 2],
                         init_values=[2, 2], chunkwise_recurrents=[True, False], layerscales=[False, True],
                         projection=16, drop_path_rate=0.0, id2label=LABELS)
    # decomposed retention in the first two stages, whole-map retention and layerscale after
    return RmtConfig(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_heads=[2, 2, 3, 4],
                     heads_ranges=[4, 4, 6, 6], mlp_ratios=[2, 2, 2, 2],
                     chunkwise_recurrents=[True, True, False, False], layerscales=[False, False, True, True],
                     projection=16, drop_path_rate=0.0, id2label=LABELS)


def make(kind: str, trunk_depth: int = 2, seed: int = 0) -> DartReshaperForImageClassification:
    """A tiny reshaper classifier with a learned scorer, in eval mode."""
    torch.manual_seed(seed)
    config = DartReshaperConfig(backbone_config=classifier_config(kind), image_size=64, patch_size=8,
                                score_grid_size=4, scorer="learned", scorer_trunk="mobilenet_v3_small",
                                scorer_trunk_depth=trunk_depth)
    model = DartReshaperForImageClassification(config).eval()
    with torch.no_grad():  # weights of variance 1 / fan-in: features and logits of order one that vary with the input
        for module in model.backbone.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.normal_(0.0, module.weight[0].numel() ** -0.5)
    return model


def pixels(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def assert_close(got, expected, name: str, tolerance: float = 1e-4, scale: float | None = None):
    """Within `tolerance` of `scale` (default: the expected values' magnitude, at least 1)."""
    scale = max(1.0, expected.abs().max().item() if scale is None else scale)
    torch.testing.assert_close(got, expected, atol=tolerance * scale, rtol=0, msg=lambda m: f"{name}: {m}")


def assert_same_outputs(got, expected):
    # logits of order one that differ between images: the tolerance is no formality
    assert expected.logits.abs().max() > 0.3
    assert expected.logits.shape[0] == 1 or (expected.logits - expected.logits[:1]).abs().max() > 0.1
    for name, atol in (("logits", 1e-4), ("warped_pixel_values", 1e-4), ("score_map", 1e-5), ("row_edges", 1e-3),
                       ("col_edges", 1e-3)):
        torch.testing.assert_close(got[name], expected[name], atol=atol, rtol=1e-5, msg=name)


def test_the_warp_of_these_models_is_not_the_identity():
    """The compared warps move rows and columns by whole pixels away from the plain resize."""
    model = make("rmt")
    with torch.no_grad():
        out = model(pixels(2, 1))
    uniform = torch.linspace(0, 64, out.row_edges.shape[1])
    assert (out.row_edges - uniform).abs().max() > 1 and (out.col_edges - uniform).abs().max() > 1


# ------------------------------------------------------------------------------------------------ torch.compile
def test_one_graph_without_breaks_in_eval_and_training():
    """ConvNeXt here; the RMT model's single graph is checked by `fullgraph=True` in the next test (which fails on a
    break), in both modes."""
    model, inputs, labels = make("convnext"), pixels(2, 1), torch.tensor([1, 3])
    for training in (False, True):
        torch._dynamo.reset()
        model.train(training)
        explanation = torch._dynamo.explain(model)(inputs, labels=labels)
        reasons = [reason.reason.splitlines()[0] for reason in explanation.break_reasons]
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), (training, reasons)


def test_fullgraph_compile_matches_eager_outputs_and_gradients():
    """`aot_eager` runs the traced forward and backward graphs (AOTAutograd) without generating kernels: the graphs,
    not a code generator, are under test here; inductor's own run is the next test."""
    # 4 images: RMT's head normalises over the batch in training, and 2 images would give it +-1 whatever the input
    # (a gradient made of rounding, which no two traces round alike)
    model, inputs, labels = make("rmt", trunk_depth=4), pixels(4, 1), torch.tensor([1, 3, 0, 4])
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_same_outputs(compiled(inputs), model(inputs))

    model.train()
    runs = []
    for run in (compiled, model):
        model.zero_grad()
        out = run(inputs, labels=labels)
        out.loss.backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (got, got_grads), (expected, expected_grads) = runs
    assert_close(got.loss, expected.loss, "loss")
    assert_close(got.logits, expected.logits, "training logits")
    assert got_grads.keys() == expected_grads.keys()
    # the loss reaches the scorer's head through the warp, and the classifier
    assert any(".scorer.head." in name for name in got_grads) and any("backbone." in name for name in got_grads)
    # within 1e-4 of the model's gradient scale: the score head's last bias has no effect (the scores are
    # standardised), so its gradient is 0 up to rounding
    scale = max(grad.abs().max().item() for grad in expected_grads.values())
    for name in expected_grads:
        assert_close(got_grads[name], expected_grads[name], f"grad {name}", scale=scale)


@pytest.mark.slow
def test_inductor_compiles_an_rmt_behind_the_reshaper():
    """Inductor generates kernels for the whole model (a two-stage RMT: each kernel is built on a cold cache). Its
    attention-fusion pass once matched RMT's 5-D retention products to a 4-D pattern and failed to compile them."""
    model, inputs = make("rmt_2_stages"), pixels(2, 1)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert_same_outputs(compiled(inputs), model(inputs))


# ------------------------------------------------------------------------------------------------- torch.export
@pytest.mark.parametrize("kind", KINDS)
def test_export_with_a_dynamic_batch_matches_eager(kind):
    model = make(kind)
    dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.export.export(model, (pixels(2, 0),), dynamic_shapes=dynamic)
    for size, seed in ((2, 1), (3, 2), (1, 3)):  # the traced size and others
        with torch.no_grad():
            assert_same_outputs(program.module()(pixels(size, seed)), model(pixels(size, seed)))


# -------------------------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_extra():
    """The `onnx` extra; without it these tests fail under CI=true, else skip with the reason."""
    missing = [name for name in ("onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"{missing} not installed (pip install -e '.[onnx]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " -- required under CI")
        pytest.skip(reason)


def run_cli(*args) -> tuple[int, str, str]:
    """`export_onnx.main(args)`: `(exit code, stdout, stderr)`."""
    from conversion import export_onnx

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = export_onnx.main([str(arg) for arg in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported_reshaper(onnx_extra, tmp_path_factory):
    """A tiny two-stage RMT reshaper folder (both retention forms) with its image processor, exported and verified by
    the CLI at batch size 2: `(model, folder, exit code, stdout, stderr)`."""
    model = make("rmt_2_stages", trunk_depth=4)
    folder = tmp_path_factory.mktemp("onnx_reshaper") / "rmt"
    model.save_pretrained(folder)
    DartImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(folder)
    return (model, folder, *run_cli(folder))


def test_cli_exports_and_verifies_a_reshaper_folder(exported_reshaper):
    _, folder, code, out, err = exported_reshaper
    assert code == 0 and "error" not in err, err
    assert (folder / "model.onnx").is_file() and "verified" in out
    for batch_size in (1, 2, 3):  # size 1, the traced size and one more, each reporting the warp's edges
        assert f"batch {batch_size}:" in out
    assert out.count("|d row_edges|") == 3 and out.count("|d col_edges|") == 3


def test_onnxruntime_reproduces_pytorch_logits_and_warp(exported_reshaper):
    from conversion import export_onnx

    model, folder, *_ = exported_reshaper
    session = export_onnx.onnx_session(folder / "model.onnx")
    assert [output.name for output in session.get_outputs()] == ["logits", "row_edges", "col_edges", "score_map"]
    assert session.get_inputs()[0].shape[0] not in (1, 2, 4)  # the batch axis is symbolic
    for size, seed in ((4, 5), (1, 6)):
        batch = pixels(size, seed)
        logits, row_edges, col_edges, score_map = session.run(None, {"pixel_values": batch.numpy()})
        with torch.no_grad():
            expected = model(batch)
        assert expected.logits.abs().max() > 0.3
        torch.testing.assert_close(torch.from_numpy(logits), expected.logits, atol=1e-4, rtol=0)
        for name, got in (("row_edges", row_edges), ("col_edges", col_edges)):
            torch.testing.assert_close(torch.from_numpy(got), expected[name], atol=export_onnx.REGION_ATOL_PIXELS,
                                       rtol=0, msg=name)
        torch.testing.assert_close(torch.from_numpy(score_map), expected.score_map, atol=1e-5, rtol=0)


def test_cli_refuses_a_reshaper_in_front_of_a_model_that_is_no_classifier(onnx_extra, tmp_path, monkeypatch):
    """A reshaper folder whose model behind the warp is a segmentation model (UperNet) is refused with exit code 2
    and a message that names it, before anything is exported."""
    from conversion import export_onnx

    def refuse(*args, **kwargs):
        raise AssertionError("the exporter exported before it refused the folder")

    monkeypatch.setattr(export_onnx, "export", refuse)
    folder = tmp_path / "segmenter"
    make("convnext").save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone_config"] = {"model_type": "upernet",
                                 "backbone_config": {"model_type": "convnext", "num_stages": 2,
                                                     "hidden_sizes": [8, 16], "depths": [1, 1],
                                                     "out_features": ["stage1", "stage2"]},
                                 "hidden_size": 8, "auxiliary_in_channels": 16}
    (folder / "config.json").write_text(json.dumps(config))
    code, _out, err = run_cli(folder)
    assert code == 2 and "upernet" in err and not (folder / "model.onnx").exists(), err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
