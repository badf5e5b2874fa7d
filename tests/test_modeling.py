"""DartModel / DartForImageClassification behaviour with tiny random configs (ViT and Vim backbones)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_dart import DartConfig, DartForImageClassification, DartImageProcessor, DartModel
from tests.conftest import estimate_batchnorm_statistics, tiny_config

BACKBONES = ["vit", "vim"]


def make_model(backbone="vit", **overrides):
    torch.manual_seed(0)
    config = tiny_config(backbone=backbone, **overrides)
    return DartForImageClassification(config).eval()


def pixels(batch=2, height=64, width=64, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_output_shapes_and_fields(backbone):
    model = make_model(backbone)
    with torch.no_grad():
        out = model(pixels(), output_hidden_states=True)
        base = model.dart(pixels(), output_hidden_states=True)
    assert out.logits.shape == (2, 5)
    assert out.regions.shape == (2, 16, 4)
    assert out.score_map.shape == (2, 4, 4)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 17, 32) for h in out.hidden_states)
    assert base.last_hidden_state.shape == (2, 17, 32)
    expected_cls = 0 if backbone == "vit" else 8
    assert base.cls_token_index == expected_cls
    torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, expected_cls])
    torch.testing.assert_close(model.classifier(base.pooler_output), out.logits)
    assert base.token_edges.shape == (2, 17) and base.row_edges.shape == (2, 5)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_num_tokens_per_call_and_any_input_size(backbone):
    model = make_model(backbone)
    with torch.no_grad():
        for num_tokens, size in [(9, (64, 64)), (25, (48, 80)), (1, (64, 64)), (30, (96, 40))]:
            out = model.dart(pixels(height=size[0], width=size[1]), num_tokens=num_tokens)
            assert out.last_hidden_state.shape == (2, num_tokens + 1, 32)
            assert out.regions.shape == (2, num_tokens, 4)
            assert out.regions[..., 2].max() <= size[1] + 1e-3 and out.regions[..., 3].max() <= size[0] + 1e-3
            assert torch.isfinite(out.last_hidden_state).all()
            cls = 0 if backbone == "vit" else num_tokens // 2
            assert out.cls_token_index == cls


def test_eager_and_sdpa_agree_and_attentions():
    model = make_model("vit")
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa = model(pixels(), output_attentions=True)
    assert sdpa.attentions is None or all(a is None for a in sdpa.attentions)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        eager = model(pixels(), output_attentions=True)
    torch.testing.assert_close(eager.logits, sdpa.logits, atol=1e-5, rtol=1e-5)
    assert len(eager.attentions) == 2 and eager.attentions[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(eager.attentions[0].sum(-1), torch.ones(2, 4, 17))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_return_dict_false_gives_a_tuple(backbone):
    model = make_model(backbone)
    with torch.no_grad():
        as_tuple = model(pixels(), return_dict=False)
        as_dict = model(pixels())
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)


def test_losses_follow_problem_type():
    model = make_model("vit")
    x = pixels()
    labels = torch.tensor([1, 3])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert model.config.problem_type == "single_label_classification"

    multi = make_model("vit", problem_type="multi_label_classification")
    targets = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))

    regression = make_model("vit", num_labels=1)
    target = torch.tensor([0.5, -1.0])
    out = regression(x, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    grads = []
    for checkpointing in (False, True):
        model = make_model(backbone, freeze_scorer_trunk=False).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(pixels(), labels=torch.tensor([0, 1])).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_frozen_trunk_gets_no_gradient_and_keeps_batchnorm_stats():
    model = make_model("vit").train()
    trunk = model.dart.embeddings.scorer.features
    stats = {k: v.clone() for k, v in trunk.state_dict().items()}
    model(pixels(), labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is None for p in trunk.parameters())
    assert not trunk.training
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert model.dart.embeddings.scorer.head.fc1.weight.grad is not None


@pytest.mark.parametrize("backbone", BACKBONES)
def test_deterministic_and_batch_independent(backbone):
    model = make_model(backbone)
    x = pixels(batch=3)
    with torch.no_grad():
        first, second = model(x).logits, model(x).logits
        alone = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first, atol=1e-5, rtol=1e-5)


def estimate_trunk_statistics(model):
    """Score maps with content (see `estimate_batchnorm_statistics`), so that small errors would move the regions."""
    estimate_batchnorm_statistics(model.dart.embeddings.scorer.features, pixels(batch=8, seed=1))
    return model


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_cpu_is_close_to_float32(backbone, dtype):
    model = estimate_trunk_statistics(make_model(backbone))
    low_model = copy.deepcopy(model).to(dtype)
    # the scorer stays float32: a rounded scorer moves the regions by pixels and with them every token
    assert low_model.dtype == dtype and low_model.dart.embeddings.projection.weight.dtype == dtype
    assert all(t.dtype == torch.float32 for t in low_model.dart.embeddings.scorer.state_dict().values()
               if t.is_floating_point())
    x = pixels().to(dtype)  # both models see the same (rounded) pixels
    with torch.no_grad():
        reference = model(x.float())
        low = low_model(x)
    assert low.logits.dtype == dtype and torch.isfinite(low.logits).all()
    torch.testing.assert_close(low.score_map, reference.score_map, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(low.regions, reference.regions, atol=1e-3, rtol=0)
    assert (low.logits.float() - reference.logits).abs().max() < 0.05 * reference.logits.abs().max() + 1e-3
    assert low_model.float().dtype == torch.float32
    assert low_model.double().dart.embeddings.scorer.head.fc1.weight.dtype == torch.float64  # only half is refused


def test_from_pretrained_in_half_precision_keeps_the_scorer_in_float32(tmp_path):
    model = estimate_trunk_statistics(make_model("vim"))
    model.save_pretrained(tmp_path)
    low = DartForImageClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert low.dtype == torch.bfloat16
    for name, tensor in low.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == (torch.float32 if ".scorer." in name else torch.bfloat16), name
            if ".scorer." in name:
                assert torch.equal(tensor, model.state_dict()[name]), name
    x = pixels().to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(low(x).regions, model(x.float()).regions, atol=1e-3, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_and_reload_with_auto_classes(tmp_path, backbone):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    model = make_model(backbone, id2label={i: f"class_{i}" for i in range(5)})
    model.save_pretrained(tmp_path)
    DartImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dart"
    assert config["auto_map"]["AutoModelForImageClassification"].endswith("DartForImageClassification")
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DartConfig)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, DartForImageClassification)
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, DartModel)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), DartImageProcessor)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits, atol=0, rtol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_pipeline_returns_labels_from_id2label(tmp_path, photo):
    from transformers import pipeline

    labels = {i: name for i, name in enumerate(["cat", "dog", "bird", "fish", "horse"])}
    model = make_model("vit", id2label=labels)
    model.save_pretrained(tmp_path)
    DartImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier(photo, top_k=3)
    assert len(predictions) == 3
    assert {p["label"] for p in predictions} <= set(labels.values())
    assert abs(sum(p["score"] for p in classifier(photo, top_k=5)) - 1.0) < 1e-4
    with torch.no_grad():
        inputs = DartImageProcessor.from_pretrained(tmp_path)(photo, return_tensors="pt")
        best = model(**inputs).logits.argmax(-1).item()
    assert predictions[0]["label"] == labels[best]


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_dart"] = None  # the package is NOT importable here
    import json, torch
    from transformers import AutoModelForImageClassification, AutoModel, AutoImageProcessor, AutoConfig
    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    x = torch.load(sys.argv[2])
    with torch.no_grad():
        logits = model(x).logits
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__,
                      "processor": type(processor).__name__, "logits": logits.tolist()}))
    """
)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_remote_code_loads_without_the_package(tmp_path, backbone):
    folder = tmp_path / "model"
    model = make_model(backbone)
    model.save_pretrained(folder)
    DartImageProcessor().save_pretrained(folder)
    for name in ("modeling_dart.py", "configuration_dart.py", "trunk_tables_dart.py", "partition_dart.py",
                 "trunks_dart.py", "cpu_tuning_dart.py", "scorer_dart.py", "embeddings_dart.py",
                 "selective_scan_dart.py", "layers_dart.py", "mamba_dart.py", "image_processing_dart.py"):
        assert (folder / name).is_file(), name
    x = pixels()
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "remote.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "x.pt")], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["module"].startswith("transformers_modules")
    assert report["base"] == "DartModel"
    assert report["processor"].startswith("DartImageProcessor")
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(report["logits"]), model(x).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_classifier_output_carries_the_token_geometry(backbone):
    model = make_model(backbone)
    with torch.no_grad():
        out = model(pixels(), num_tokens=9)
        base = model.dart(pixels(), num_tokens=9)
    for name in ("regions", "score_map", "token_edges", "row_edges"):
        torch.testing.assert_close(out[name], base[name], atol=0, rtol=0, msg=name)
    assert out.token_edges.shape == (2, 10) and out.row_edges.shape == (2, 4)


def test_trainer_predict_gathers_only_the_logits(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = make_model("vit")
    data = [{"pixel_values": x, "labels": i % 5} for i, x in enumerate(pixels(batch=6))]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, report_to="none", use_cpu=True)
    result = Trainer(model=model, args=args).predict(data)
    # without `DartConfig.keys_to_ignore_at_inference` the predictions would be a tuple with regions, score maps, ...
    assert result.predictions.shape == (6, 5)
    with torch.no_grad():
        expected = model(torch.stack([d["pixel_values"] for d in data])).logits
    torch.testing.assert_close(torch.as_tensor(result.predictions), expected, atol=1e-5, rtol=1e-5)


def test_pipeline_does_not_ask_about_remote_code(tmp_path, photo, monkeypatch):
    """`pipeline()` probes `AutoVideoProcessor` for every task; with the package imported it must find DART locally
    instead of offering the folder's remote code on the terminal (a 15 s prompt)."""
    import builtins

    from transformers import pipeline

    prompts = []
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    make_model("vit", id2label={i: f"class_{i}" for i in range(5)}).save_pretrained(tmp_path)
    DartImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    assert len(classifier(photo, top_k=2)) == 2
    assert prompts == []


@pytest.mark.parametrize("backbone", ["vit", "vim", "videomamba"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_from_config_in_half_precision_builds_the_scorer_in_float32(backbone, dtype):
    """`AutoModel.from_config(config, dtype=...)` constructs under a half default dtype: the scorer is still built
    (and initialised) in float32, everything else in `dtype`, and the default dtype is restored."""
    from transformers import AutoModel

    if backbone == "videomamba":
        from tests.test_video import video_config

        config = video_config()
    else:
        config = tiny_config(backbone=backbone)
    torch.manual_seed(0)
    reference = AutoModel.from_config(config)
    torch.manual_seed(0)
    low = AutoModel.from_config(config, dtype=dtype)
    assert torch.get_default_dtype() == torch.float32
    assert type(low) is type(reference)
    for name, tensor in low.state_dict().items():
        if tensor.is_floating_point():
            assert tensor.dtype == (torch.float32 if ".scorer." in name else dtype), name
    scorer = {k: v for k, v in low.state_dict().items() if ".scorer." in k}
    assert scorer and all(torch.equal(v, reference.state_dict()[k]) for k, v in scorer.items())
