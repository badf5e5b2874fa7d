"""Shared test helpers: where the original fixtures live, tiny configs, a real photo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_ENV = "DART_FIXTURES_DIR"
DEFAULT_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "original"

torch.set_num_threads(min(2, torch.get_num_threads()))


def fixtures_dir() -> Path:
    return Path(os.environ.get(FIXTURES_ENV, DEFAULT_FIXTURES))


def require_fixture(*names: str) -> Path:
    """Return the fixtures folder; skip (or fail under CI=true) when it or a named file is missing."""
    folder = fixtures_dir()
    missing = [n for n in names if not (folder / n).is_file()]
    if not folder.is_dir() or missing:
        reason = (f"original DART fixtures not found at {folder} (missing: {missing or 'the folder'}); "
                  f"set {FIXTURES_ENV} to the folder holding them")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " -- they are required under CI")
        pytest.skip(reason)
    return folder


def tiny_config(**overrides):
    from modeling_dart import DartConfig

    kwargs = dict(
        backbone="vit",
        image_size=64,
        patch_size=8,
        score_grid_size=4,
        num_tokens=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
        scorer_trunk="mobilenet_v3_small",
        scorer_head="v1",
    )
    kwargs.update(overrides)
    return DartConfig(**kwargs)


@pytest.fixture
def photo():
    """A real photo (scikit-image's CC0 'chelsea' cat), as a PIL image."""
    from PIL import Image

    return Image.open(REPO_ROOT / "conversion" / "assets" / "chelsea.jpg").convert("RGB")


class _PicklePayload:
    def __reduce__(self):
        return (print, ("this must never run",))


def write_untrusted_checkpoint(path):
    """A `.pth` whose unpickling would call a function: `weights_only` loading must refuse it."""
    import pickle

    with open(path, "wb") as handle:
        pickle.dump({"model": _PicklePayload()}, handle)
    return path


def estimate_batchnorm_statistics(trunk, images):
    """Replace a random trunk's BatchNorm running statistics by those of `images` (cumulative average). With the
    default statistics a random MobileNetV3 trunk's activations vanish (~1e-8) and the score map carries no content,
    so small numerical errors could not move the regions; the fixtures' authors estimated them the same way."""
    import torch

    for norm in trunk.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.reset_running_stats()
            norm.momentum = None
    trunk.train()
    with torch.no_grad():
        trunk(images)
    trunk.eval()
    return trunk
