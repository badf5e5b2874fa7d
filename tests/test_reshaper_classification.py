"""The reshaper classifier (`DartReshaperConfig`, `DartReshaperForImageClassification`): the composite config and its
backbone config, tiny ConvNeXt / ResNet / Swin / RMT backbones (forward, loss, warp outputs), the uniform scorer as a
plain resize, Auto classes, save/load, `pipeline("image-classification")`, remote code, and end-to-end parity with the
reduced DARMT fixture (logits atol 5e-4: the fixtures README, section "RMT-L6 with DAIR").

Fixtures: ../shared/fixtures/original (or $DART_FIXTURES_DIR).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.nn import functional as F

from modeling_dart import (
    DAIR_PARITY_OPTIONS,
    DartImageProcessor,
    DartReshaperConfig,
    DartReshaperForImageClassification,
    RmtConfig,
    RmtForImageClassification,
)
from tests.conftest import require_fixture

CHECKPOINT = "darmt_l6_reduced.pth"
GOLDEN = "darmt_l6_reduced_golden.safetensors"
GOLDEN_JSON = "darmt_l6_reduced_golden.json"
INPUTS = "inputs_b4_448_seed1234.safetensors"
ATOL_LOGITS = 5e-4  # README "RMT-L6 with DAIR": logits_batch / logits_single end to end


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the models are small, and two threads on a busy two-core machine wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LABELS = {i: f"class_{i}" for i in range(5)}


def backbone_config(kind: str):
    """A tiny image classifier configuration with 5 labels."""
    from transformers import ConvNextConfig, ResNetConfig, SwinConfig

    if kind == "convnext":
        return ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], id2label=LABELS)
    if kind == "resnet":
        return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            id2label=LABELS)
    if kind == "swin":
        return SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
                          id2label=LABELS)
    return RmtConfig(embed_dims=[8, 16, 24, 32], depths=[1, 1, 2, 1], num_heads=[2, 2, 3, 4], heads_ranges=[4, 4, 6, 6],
                     mlp_ratios=[2, 2, 2, 2], chunkwise_recurrents=[True, True, True, False],
                     layerscales=[False, False, True, True], projection=16, drop_path_rate=0.0, id2label=LABELS)


def tiny_config(kind: str = "rmt", **overrides) -> DartReshaperConfig:
    """64x64 inputs warped to 32x32 (cells of 8 px on a 4x4 score grid); a uniform scorer unless overridden."""
    fields = dict(backbone_config=backbone_config(kind), image_size=64, patch_size=8, score_grid_size=4,
                  scorer="uniform")
    fields.update(overrides)
    return DartReshaperConfig(**fields)


def learned(kind: str = "rmt", **overrides) -> DartReshaperConfig:
    return tiny_config(kind, scorer="learned", scorer_trunk="mobilenet_v3_small", scorer_trunk_depth=4, **overrides)


def tiny_model(config: DartReshaperConfig, seed: int = 0) -> DartReshaperForImageClassification:
    torch.manual_seed(seed)
    return DartReshaperForImageClassification(config).eval()


def pixels(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------- config
def test_config_nests_the_backbone_and_shares_its_labels():
    from transformers import AutoConfig, ConvNextConfig

    config = tiny_config("convnext", **DAIR_PARITY_OPTIONS)
    assert config.model_type == "dart_reshaper" and type(config.backbone_config) is ConvNextConfig
    assert config.num_labels == 5 and config.id2label == LABELS and config.label2id == {v: k for k, v in LABELS.items()}
    config.num_labels = 3  # set here, set there
    assert config.backbone_config.num_labels == 3 and config.backbone_config.id2label == config.id2label
    config.problem_type = "multi_label_classification"
    assert config.backbone_config.problem_type == "multi_label_classification"
    saved = json.loads(config.to_json_string())
    assert saved["backbone_config"]["model_type"] == "convnext" and saved["column_sampling"] == "strip"
    again = DartReshaperConfig.from_dict(saved)
    assert type(again.backbone_config) is ConvNextConfig and again.to_dict() == config.to_dict()
    assert type(AutoConfig.for_model("dart_reshaper")) is DartReshaperConfig
    assert type(DartReshaperConfig().backbone_config) is RmtConfig  # the default backbone: RMT-T3
    relabelled = DartReshaperConfig(backbone_config=backbone_config("resnet"), num_labels=7)
    assert relabelled.backbone_config.num_labels == 7
    rmt = DartReshaperConfig.from_dict(json.loads(tiny_config("rmt").to_json_string()))
    assert type(rmt.backbone_config) is RmtConfig and rmt.backbone_config.embed_dims == [8, 16, 24, 32]


def test_darmt_l6_preset():
    config = DartReshaperConfig.darmt_l6()
    assert config.backbone_config.to_dict() == RmtConfig.from_preset("l6", num_labels=1000).to_dict()
    assert (config.scorer_trunk, config.scorer_head, config.scorer_hidden_size) == ("efficientnet_b0", "v1", 96)
    assert (config.image_size, config.patch_size, config.downscale_factor, config.score_grid_size) == (448, 16, 2, 14)
    assert all(getattr(config, name) == value for name, value in DAIR_PARITY_OPTIONS.items())


@pytest.mark.parametrize(
    ("overrides", "error", "field"),
    [
        (dict(backbone_config={"hidden_size": 8}), ValueError, "backbone_config.*model_type"),
        (dict(backbone_config={"model_type": "no_such_model"}), ValueError, "backbone_config"),
        (dict(backbone_config=3), TypeError, "backbone_config"),
        (dict(column_sampling="rows"), ValueError, "column_sampling"),
        (dict(score_normalization="global"), ValueError, "score_normalization"),
        (dict(first_edge_at_one=1), TypeError, "first_edge_at_one"),
        (dict(edge_scale_from_first_image="yes"), TypeError, "edge_scale_from_first_image"),
        (dict(scorer="learned", scorer_trunk="resnet50"), ValueError, "scorer_trunk"),
        (dict(image_size=72), ValueError, "image_size"),
        (dict(output_size=[24, 30]), ValueError, "output_size"),
        (dict(patch_size=0), ValueError, "patch_size"),
        (dict(num_channels=4), ValueError, "num_channels"),
    ],
)
def test_config_refuses_bad_values_naming_the_field(overrides, error, field):
    with pytest.raises(error, match=field):
        tiny_config("convnext", **overrides)


def test_a_backbone_that_is_not_an_image_classifier_is_refused():
    """A text model's configuration is refused by the configuration; a segmentation model's (UperNet), which the
    configuration takes for `DartReshaperForSemanticSegmentation`, by the classifier."""
    from transformers import BertConfig, UperNetConfig

    with pytest.raises(ValueError, match=r"backbone_config.*image classifier.*semantic segmentation"):
        DartReshaperConfig(backbone_config=BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                                      intermediate_size=8))
    with pytest.raises(ValueError, match=r"backbone_config.*image classifier"):
        DartReshaperConfig(backbone_config={"model_type": "bert"})
    segmentation = DartReshaperConfig(backbone_config=UperNetConfig(), scorer="uniform")
    with pytest.raises(ValueError, match=r"backbone_config.*image classifier"):
        DartReshaperForImageClassification(segmentation)
    with pytest.raises(TypeError, match="config"):
        DartReshaperForImageClassification(RmtConfig())


# ---------------------------------------------------------------------------------------------- forward, backbones
@pytest.mark.parametrize("kind", ["convnext", "resnet", "swin", "rmt"])
def test_uniform_scorer_is_a_plain_resize_of_the_image(kind):
    """The uniform warp of a 64x64 input into 32x32 reads every other pixel: the warped image is
    `F.interpolate(mode="nearest")` exactly, and the logits and loss are the backbone's on it."""
    model = tiny_model(tiny_config(kind))
    assert model.reshaper.scorer is None and not list(model.reshaper.parameters())
    x, labels = pixels(), torch.tensor([1, 4])
    with torch.no_grad():
        out = model(x, labels=labels)
        resized = F.interpolate(x, size=(32, 32), mode="nearest")
        expected = model.backbone(resized).logits
    assert torch.equal(out.warped_pixel_values, resized) and torch.equal(resized, x[:, :, ::2, ::2])
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(expected, labels), atol=1e-6, rtol=0)
    assert torch.equal(out.row_edges, (torch.arange(5) * 16.0).expand(2, -1))
    assert torch.equal(out.col_edges, out.row_edges) and torch.equal(out.score_map, torch.ones(2, 4, 4))
    assert out.logits.shape == (2, 5) and model.config.id2label == LABELS
    with torch.no_grad():
        loss, logits = model(x, labels=labels, return_dict=False)[:2]
    torch.testing.assert_close((loss, logits), (out.loss, out.logits), atol=1e-6, rtol=0)


def test_learned_scorer_warps_and_a_training_step_reaches_the_head_and_the_backbone():
    model = tiny_model(learned("resnet")).train()
    x = pixels(batch=3, size=64)
    out = model(x, labels=torch.tensor([0, 1, 2]), output_hidden_states=True)
    assert out.warped_pixel_values.shape == (3, 3, 32, 32) and out.score_map.shape == (3, 4, 4)
    for edges in (out.row_edges, out.col_edges):
        assert edges.shape == (3, 5) and (edges.diff(dim=-1) > 0).all()
        torch.testing.assert_close(edges[:, [0, -1]], torch.tensor([[0.0, 64.0]]).expand(3, -1), atol=1e-4, rtol=0)
    assert out.hidden_states is not None and len(out.hidden_states) == 3  # ResNet: embeddings + 2 stages
    out.loss.backward()
    trunk = model.reshaper.scorer.features
    assert all(p.grad is None and not p.requires_grad for p in trunk.parameters())  # frozen, as the original
    assert model.reshaper.scorer.head.fc1.weight.grad is not None
    assert all(p.grad is not None for p in model.backbone.parameters())
    with torch.no_grad():
        fixed = model.eval()(pixels(batch=1, size=96), output_size=(24, 40))
    assert fixed.warped_pixel_values.shape == (1, 3, 24, 40) and fixed.col_edges.shape == (1, 6)


def test_a_given_score_map_places_the_warp_and_the_scorer_does_not_run(monkeypatch):
    """`score_map=` replaces the scorer's map: an all-zero map is the plain resize, a map whose top row scores 4x
    the others gives that row more warped rows (and leaves the columns, whose marginals are equal, uniform), and the
    loss reaches the given map."""
    model = tiny_model(learned("convnext"))
    monkeypatch.setattr(model.reshaper.scorer, "forward", lambda *a, **k: pytest.fail("the scorer ran"))
    x, labels = pixels(), torch.tensor([1, 4])
    with torch.no_grad():
        flat = model(x, score_map=torch.zeros(2, 4, 4))
    # the general sampler, not the uniform scorer's exact shortcut: equal up to rounding
    torch.testing.assert_close(flat.warped_pixel_values, x[:, :, ::2, ::2], atol=1e-5, rtol=0)
    assert torch.equal(flat.row_edges, (torch.arange(5) * 16.0).expand(2, -1))
    scores = torch.ones(2, 4, 4)
    scores[:, 0] = 4.0
    scores.requires_grad_(True)
    out = model.train()(x, labels=labels, score_map=scores)
    assert (out.row_edges[:, 1] < 16).all() and torch.allclose(out.col_edges, flat.col_edges)
    out.loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_a_coarse_score_grid_builds():
    """A learned scorer on a 3x3 grid: the reshaper's scorer configuration once asked for the token form's default of
    196 tokens, more than 16 per cell of such a grid, and refused it."""
    model = tiny_model(tiny_config("convnext", scorer="learned", scorer_trunk="mobilenet_v3_small", score_grid_size=3))
    with torch.no_grad():
        out = model(pixels())
    assert out.score_map.shape == (2, 3, 3) and out.warped_pixel_values.shape == (2, 3, 32, 32)


def test_bad_input_names_the_argument():
    model = tiny_model(tiny_config("convnext"))
    with pytest.raises(ValueError, match="pixel_values"):
        model(None)
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(1, 3, 40, 64))  # not a multiple of patch_size * downscale_factor = 16
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(1, 4, 64, 64))
    with pytest.raises(TypeError, match="pixel_values"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        model(pixels(), labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="score_normalization"):
        model(pixels(), score_normalization="global")


def test_every_parameter_and_buffer_is_initialised():
    model = tiny_model(learned("rmt"))
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.fill_(float("nan") if tensor.is_floating_point() else 7)
    for module in model.modules():
        module._is_hf_initialized = False
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor._is_hf_initialized = False
    model.initialize_weights()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
        else:
            assert (tensor == 0).all(), name
    assert (model.reshaper.scorer.head.fc2.bias == 0).all()
    assert (model.backbone.rmt.encoder.stages[2].layers[0].retention_layer_scale == 1e-6).all()


# ----------------------------------------------------------------------------------- Auto classes, save, pipeline
def test_save_load_auto_classes_and_pipeline(tmp_path, photo):
    from transformers import AutoModelForImageClassification, pipeline

    model = tiny_model(learned("convnext"))
    assert type(AutoModelForImageClassification.from_config(model.config)) is DartReshaperForImageClassification
    model.save_pretrained(tmp_path)
    DartImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dart_reshaper" and saved["backbone_config"]["model_type"] == "convnext"
    assert saved["auto_map"] == {"AutoConfig": "configuration_reshaper_dart.DartReshaperConfig",
                                 "AutoModelForImageClassification":
                                     "modeling_reshaper_dart.DartReshaperForImageClassification"}
    for name in ("modeling_reshaper_dart.py", "configuration_reshaper_dart.py", "reshaper_dart.py",
                 "modeling_rmt.py", "configuration_rmt.py"):
        assert (tmp_path / name).is_file(), name
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is DartReshaperForImageClassification and reloaded.config.id2label == LABELS
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    assert not any(p.requires_grad for p in reloaded.reshaper.scorer.features.parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits, atol=1e-6, rtol=0)

    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier(photo, top_k=3)
    assert len(predictions) == 3 and {p["label"] for p in predictions} <= set(LABELS.values())
    with torch.no_grad():
        inputs = DartImageProcessor.from_pretrained(tmp_path)(photo, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 64, 64)
        best = model(**inputs).logits.argmax(-1).item()
    assert predictions[0]["label"] == LABELS[best]


def test_the_image_processor_defaults_to_the_original_evaluation():
    """darmt-L6 was evaluated as every released DART (main.py's DeiT transform at `--input-size 448`): shorter side
    to int(448 / 0.875) = 512, bicubic, centre crop 448, ImageNet mean and std."""
    processor = DartImageProcessor()
    assert processor.size == {"shortest_edge": 512} and processor.crop_size == {"height": 448, "width": 448}
    assert processor.resample == 3 and list(processor.image_mean) == [0.485, 0.456, 0.406]
    assert list(processor.image_std) == [0.229, 0.224, 0.225]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_dart"] = None  # the package is NOT importable here
    import json, torch
    from transformers import AutoConfig, AutoModelForImageClassification
    answers = {}
    for folder in sys.argv[2:]:
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(torch.load(sys.argv[1])).logits
        answers[folder] = {"module": type(model).__module__, "backbone": type(model.backbone).__name__,
                           "backbone_config": type(model.config.backbone_config).__module__,
                           "logits": logits.tolist()}
    print(json.dumps(answers))
    """
)


def test_remote_code_loads_without_the_package(tmp_path):
    models = {"rmt": tiny_model(learned("rmt")), "convnext": tiny_model(tiny_config("convnext"))}
    for name, model in models.items():
        model.save_pretrained(tmp_path / name)
    torch.save(pixels(), tmp_path / "x.pt")
    (tmp_path / "remote.py").write_text(REMOTE_SCRIPT)
    folders = [str(tmp_path / name) for name in models]
    result = subprocess.run([sys.executable, str(tmp_path / "remote.py"), str(tmp_path / "x.pt"), *folders],
                            check=False, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, model), folder in zip(models.items(), folders):
        answer = answers[folder]
        assert "modeling_dart" not in answer["module"] and "modeling_dart" not in answer["backbone_config"]
        assert answer["backbone"] == type(model.backbone).__name__
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(answer["logits"]), model(pixels()).logits, atol=1e-5, rtol=0)
    assert answers[folders[0]]["backbone"] == RmtForImageClassification.__name__


# ------------------------------------------------------------------------------- parity with the reduced DARMT
@functools.cache
def _darmt():
    from safetensors.torch import load_file

    from conversion.convert_dart_original import convert_darmt

    folder = require_fixture()
    model, _, report = convert_darmt(folder / CHECKPOINT)
    meta = json.loads((folder / GOLDEN_JSON).read_text())
    return model, report, load_file(folder / GOLDEN), load_file(folder / INPUTS)["pixel_values"], meta


def darmt():
    require_fixture(CHECKPOINT, GOLDEN, GOLDEN_JSON, INPUTS)
    return _darmt()


def test_reduced_darmt_end_to_end_reproduces_the_golden_logits():
    """The whole original model (reshaper with the original's behaviour, RMT) from the checkpoint's keys: the batch's
    logits (batch-standardised scores) and each image's alone within the README's 5e-4, the same predictions, and
    the warp's row heights and column widths (the original's, in warped pixels, are half ours) within 5e-4."""
    model, report, golden, x, meta = darmt()
    assert report["num_parameters"] == meta["param_counts"]["total"] == 6_488_789
    with torch.no_grad():
        batch = model(x)
        singles = [model(x[i : i + 1]) for i in range(x.shape[0])]
    torch.testing.assert_close(batch.logits, golden["logits_batch"], atol=ATOL_LOGITS, rtol=0)
    single_logits = torch.cat([out.logits for out in singles])
    torch.testing.assert_close(single_logits, golden["logits_single"], atol=ATOL_LOGITS, rtol=0)
    assert batch.logits.argmax(-1).tolist() == meta["argmax_batch"]
    assert single_logits.argmax(-1).tolist() == meta["argmax_single"]
    for prefix, out in (("batch", batch), ("single", None)):
        rows = out.row_edges if out is not None else torch.cat([o.row_edges for o in singles])
        cols = out.col_edges if out is not None else torch.cat([o.col_edges for o in singles])
        torch.testing.assert_close(rows.diff(dim=-1) / 2, golden[f"{prefix}.row_heights"], atol=5e-4, rtol=0)
        torch.testing.assert_close(cols.diff(dim=-1) / 2, golden[f"{prefix}.col_heights"], atol=5e-4, rtol=0)
    print(json.dumps({"logits_batch": float((batch.logits - golden["logits_batch"]).abs().max()),
                      "logits_single": float((single_logits - golden["logits_single"]).abs().max())}))


def test_reduced_darmt_batch_logits_need_the_batch_scores():
    """Per-image scores (the clean default) change the batch's logits by far more than the tolerance: the parity
    above depends on `score_normalization="batch"`, and the clean form predicts each image as it is predicted
    alone."""
    model, _, golden, x, _ = darmt()
    with torch.no_grad():
        clean = model(x, score_normalization="image").logits
    assert (clean - golden["logits_batch"]).abs().max() > 10 * ATOL_LOGITS
    torch.testing.assert_close(clean, golden["logits_single"], atol=ATOL_LOGITS, rtol=0)
