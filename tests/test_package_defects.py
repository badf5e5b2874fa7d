"""The package's structural contracts: each model family resolves to its own classes through every Auto class, no
checkpoint conversion is registered that matches nothing, the converter of pretrained backbones sits below the model
classes (no import cycle), configs refuse wrong types (also when set after construction) and warn on near-miss
keywords, and classification labels are validated before the loss."""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForVideoClassification,
)

from modeling_dart import (
    DartConfig,
    DartForImageClassification,
    DartModel,
    DartVideoConfig,
    DartVideoMambaForVideoClassification,
    DartVideoMambaModel,
)
from tests.conftest import tiny_config

PACKAGE = Path(__file__).resolve().parents[1] / "modeling_dart"


def tiny_video_config(**overrides):
    return tiny_config(backbone="videomamba", num_frames=2, **overrides)


# ------------------------------------------------------------------------------ the two families and the Auto classes
def test_a_videomamba_config_is_the_video_family():
    config = DartConfig(backbone="videomamba", num_frames=4)
    assert type(config) is DartVideoConfig and config.model_type == "dart_video" and config.num_frames == 4
    assert type(DartConfig(backbone="vim")) is DartConfig
    with pytest.raises(ValueError, match="backbone"):
        DartVideoConfig(backbone="vit")


def test_auto_model_from_config_picks_the_family():
    assert type(AutoModel.from_config(tiny_config())) is DartModel
    assert type(AutoModel.from_config(tiny_video_config())) is DartVideoMambaModel
    assert type(AutoModelForVideoClassification.from_config(tiny_video_config())) is DartVideoMambaForVideoClassification
    with pytest.raises(ValueError):
        AutoModelForImageClassification.from_config(tiny_video_config())
    with pytest.raises(ValueError, match="DartVideoConfig"):
        DartModel(tiny_video_config())


def test_auto_model_from_a_saved_video_folder(tmp_path):
    model = DartVideoMambaForVideoClassification(tiny_video_config()).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "dart_video"
    assert saved["auto_map"]["AutoConfig"] == "configuration_dart.DartVideoConfig"
    assert saved["auto_map"]["AutoModel"] == "modeling_video_dart.DartVideoMambaModel"
    assert type(AutoConfig.from_pretrained(tmp_path)) is DartVideoConfig
    base, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert type(base) is DartVideoMambaModel and not info["missing_keys"]
    assert type(AutoModelForVideoClassification.from_pretrained(tmp_path)) is DartVideoMambaForVideoClassification


def test_a_video_folder_saved_before_the_video_config_still_loads(tmp_path):
    """Folders written before `DartVideoConfig` say `model_type: dart` with `backbone: videomamba`."""
    model = DartVideoMambaForVideoClassification(tiny_video_config()).eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["model_type"] = "dart"
    saved["auto_map"] = {
        "AutoConfig": "configuration_dart.DartConfig",
        "AutoModel": "modeling_video_dart.DartVideoMambaModel",
        "AutoModelForVideoClassification": "modeling_video_dart.DartVideoMambaForVideoClassification",
    }
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert type(AutoConfig.from_pretrained(tmp_path)) is DartVideoConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is DartVideoMambaModel
    loaded = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is DartVideoMambaForVideoClassification
    clip = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip).logits, model(clip).logits)


# ------------------------------------------------------------------------------ checkpoint conversions
@pytest.mark.parametrize(
    "config",
    [tiny_config(), tiny_config(scorer_head="saliency"), tiny_config(backbone="vim"), tiny_video_config()],
    ids=["vit-v1", "vit-saliency", "vim", "videomamba"],
)
def test_every_registered_conversion_matches_the_model_it_is_registered_for(tmp_path, config):
    """Transformers' `test_reverse_loading_mapping` logic: serialise, then reverse-map; every source pattern of a
    conversion registered for the model type must match a key of the serialised model."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    model = AutoModel.from_config(config)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    conversions = get_checkpoint_conversion_mapping(config.model_type) or []
    for conversion in conversions:
        sources = getattr(conversion, "source_patterns", None) or getattr(conversion, "source_keys", None) or []
        sources = [sources] if isinstance(sources, str) else sources
        for pattern in sources:
            assert any(re.search(pattern, key) for key in keys), f"{pattern!r} matches no key of {type(model).__name__}"
    reloaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values())


# ------------------------------------------------------------------------------ no import cycle
def _relative_imports(path: Path) -> set[str]:
    """Every `modeling_dart` module that `path` imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("modeling_dart."):
                found.add(node.module.split(".")[1])
    return found


def test_the_package_has_no_import_cycle():
    graph = {path.stem: _relative_imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}

    def reaches(start, target, seen=()):
        return any(nxt == target or (nxt not in seen and reaches(nxt, target, seen + (nxt,)))
                   for nxt in graph.get(start, ()))

    cycles = [name for name in graph if reaches(name, name)]
    assert not cycles, {name: graph[name] for name in cycles}
    assert "modeling_dart" not in graph["from_backbone"]


def test_from_pretrained_backbone_is_a_class_method_of_the_class_body():
    assert "from_pretrained_backbone" in DartForImageClassification.__dict__
    assert isinstance(DartForImageClassification.__dict__["from_pretrained_backbone"], classmethod)


def test_dead_names_are_gone():
    config = DartConfig()
    assert not hasattr(config, "is_mamba") and not hasattr(config, "intermediate_mamba_size")
    from modeling_dart import embeddings_dart, trunks_dart

    assert not hasattr(embeddings_dart, "ConvBnAct") and not hasattr(embeddings_dart, "TRUNKS")
    assert "TRUNKS" not in trunks_dart.__all__


# ------------------------------------------------------------------------------ config types
BOOL_FIELDS = ("freeze_scorer_trunk", "token_geometry_embedding", "qkv_bias", "use_conv_bias", "use_bias",
               "residual_in_fp32", "bidirectional_divide_out", "use_mamba_kernels")


@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, 1.0])
def test_boolean_fields_refuse_other_types(field, value):
    if not (field == "bidirectional_divide_out" and value is None):  # None: the backbone's default
        with pytest.raises(TypeError, match=field):
            DartConfig(**{field: value})
    config = DartConfig()
    before = getattr(config, field)
    with pytest.raises(TypeError, match=field):
        setattr(config, field, value)
    assert getattr(config, field) == before  # a refused value is not kept


@pytest.mark.parametrize("field, value", [("num_tokens", 0), ("drop_path_rate", 1.5), ("scorer_head", "v3"),
                                          ("score_grid_size", 2.5), ("scorer_max_density_ratio", 1.0)])
def test_fields_set_after_construction_are_checked(field, value):
    config = DartConfig()
    before = getattr(config, field)
    with pytest.raises(ValueError, match=field):
        setattr(config, field, value)
    assert getattr(config, field) == before


def test_relations_between_fields_are_checked_when_a_model_is_built():
    config = tiny_config()
    config.num_tokens = config.max_num_tokens() + 1  # a valid positive int, too many for the grid
    with pytest.raises(ValueError, match="num_tokens"):
        DartModel(config)


def test_near_miss_keywords_warn():
    with pytest.warns(UserWarning, match="did you mean `num_tokens`"):
        DartConfig(num_token=8)
    with pytest.warns(UserWarning, match="did you mean `qkv_bias`"):
        DartConfig(qvk_bias=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DartConfig(my_own_note="kept")  # far from every field: Transformers keeps it, silently
        DartConfig(num_frames=4)  # a video field on the image config of an old folder


# ------------------------------------------------------------------------------ labels
@pytest.fixture(scope="module")
def classifier():
    return DartForImageClassification(tiny_config(num_labels=3)).eval()


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0, 3]), ValueError, r"\[0, 3\).*got 3"),
    (torch.tensor([0, -2]), ValueError, "got -2"),
    (torch.tensor([0, 1, 2]), ValueError, "batch size 2"),
    (torch.tensor([[0], [1]]), ValueError, r"shape \(2,\)"),
    ([0, 1], TypeError, "torch.Tensor"),
])
def test_bad_labels_are_clear_errors(classifier, labels, error, match):
    pixels = torch.randn(2, 3, 64, 64)
    classifier.config.problem_type = None
    with pytest.raises(error, match=match):
        classifier(pixels, labels=labels)
    assert classifier.config.problem_type is None


def test_int32_labels_and_ignore_index_work(classifier):
    pixels = torch.randn(2, 3, 64, 64)
    classifier.config.problem_type = None
    with torch.no_grad():
        logits = classifier(pixels).logits
        loss = classifier(pixels, labels=torch.tensor([2, 0], dtype=torch.int32)).loss
        ignored = classifier(pixels, labels=torch.tensor([2, -100])).loss
    expected = -(logits.log_softmax(-1)[0, 2] + logits.log_softmax(-1)[1, 0]) / 2
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(ignored, -logits.log_softmax(-1)[0, 2])


def test_a_failed_call_does_not_switch_the_problem_type(classifier):
    """Float labels of shape (batch,) are neither class indices nor multi-hot targets: refused, and the config keeps
    reading later integer labels as single-label classification."""
    pixels = torch.randn(2, 3, 64, 64)
    classifier.config.problem_type = None
    with pytest.raises(ValueError, match="multi label classification"):
        classifier(pixels, labels=torch.tensor([1.0, 0.0]))
    assert classifier.config.problem_type is None
    with torch.no_grad():
        assert torch.isfinite(classifier(pixels, labels=torch.tensor([1, 0])).loss)
    assert classifier.config.problem_type == "single_label_classification"
    classifier.config.problem_type = None


# ------------------------------------------------------------------------------ inputs found by the probe run
def test_pixel_values_far_from_normalised_are_refused(classifier):
    with pytest.raises(ValueError, match="pixel_values.*1e\\+30"):
        classifier(torch.full((1, 3, 64, 64), 1e30))
    with torch.no_grad():  # raw 0..255 floats are unusual but finite: they still run
        assert torch.isfinite(classifier(torch.full((1, 3, 64, 64), 255.0)).logits).all()


def test_a_folder_without_config_json_is_an_error(tmp_path):
    DartForImageClassification(tiny_config()).save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DartForImageClassification.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        DartConfig.from_pretrained(tmp_path)
