"""Targets for the scorer from the model's own backbone: where the classifier looks, mapped back onto the score grid.

The scorer places tokens; the classification loss reaches its scores only through the differentiable quantiles,
which is a weak signal. These helpers turn what the backbone attends to (or what the loss is sensitive to) into a
target density on the score grid, so that a KL term can pull the scorer's density towards it (self-distillation):

1. a mass per token: the cls token's attention in the last layer (`cls_attention_mass`), the attention rollout
   through all layers (`rollout_mass`), or the size of the loss's gradient on each token (`gradient_mass`);
2. `token_mass_to_grid` spreads each token's mass evenly over the pixels of its region (every piece of a token that
   straddles rows) and integrates it over the score cells: mass is conserved;
3. `density_distillation_loss`: `KL(target || pdf)`, the target detached.

A target from outside the backbone: `MilEvidenceHead`, a gated-attention multiple-instance classifier on a feature
map (trained on the image labels alone), whose attention over the cells, moved onto the score grid by
`resample_mass` (mass conserved), says where the class was read from (`DartConfig.scorer_evidence_weight`).

A token's region shrinks where the scorer's density is high, so a uniform attention mapped back gives the scorer's
own (token-averaged) density: the target differs from the current placement only where the backbone attends to
some tokens more than to others. None of this runs at inference; it is a training option
(`benchmarks/dart_vs_uniform.py --distill`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .partition_dart import interval_overlap


def _check_tensor(value, name: str, ndim: int) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}.")
    if value.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(value.shape)}.")


def token_mass_to_grid(mass: torch.Tensor, row_edges: torch.Tensor, token_edges: torch.Tensor, height: int,
                       width: int, grid_size: int) -> torch.Tensor:
    """Spread each token's mass uniformly over its region and integrate it over a `grid_size x grid_size` grid.

    Args:
        mass (`(batch, num_tokens)`): a non-negative mass per token (patch tokens only, in token order).
        row_edges (`(batch, num_rows + 1)`): token-row boundaries in input pixels (`DartEmbeddingsOutput.row_edges`).
        token_edges (`(batch, num_tokens + 1)`): token boundaries along the concatenated row strip, in strip pixels,
            row `i` occupying `[i * width, (i + 1) * width)` (`DartEmbeddingsOutput.token_edges`).
        height, width (`int`): the input's size in pixels.
        grid_size (`int`): the score grid's side; cells are `height / grid_size x width / grid_size` pixels.

    Returns:
        `(batch, grid_size * grid_size)` row-major (y, then x), the layout of `DartEmbeddingsOutput.pdf`. Its sum
        over the cells equals the sum of `mass` for every token of positive area (a token of zero area has no
        pixels to carry its mass and is dropped).
    """
    _check_tensor(mass, "mass", 2)
    _check_tensor(row_edges, "row_edges", 2)
    _check_tensor(token_edges, "token_edges", 2)
    if token_edges.shape != (mass.shape[0], mass.shape[1] + 1):
        raise ValueError(f"`token_edges` must have shape {(mass.shape[0], mass.shape[1] + 1)} for `mass` of shape "
                         f"{tuple(mass.shape)}, got {tuple(token_edges.shape)}.")
    if row_edges.shape[0] != mass.shape[0] or row_edges.shape[1] < 2:
        raise ValueError(f"`row_edges` must have shape (batch={mass.shape[0]}, num_rows + 1 >= 2), got "
                         f"{tuple(row_edges.shape)}.")
    for name, value in (("height", height), ("width", width), ("grid_size", grid_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    dtype = torch.promote_types(mass.dtype, torch.float32)
    mass, row_edges, token_edges = mass.to(dtype), row_edges.to(dtype), token_edges.to(dtype)
    batch, num_tokens = mass.shape
    num_rows = row_edges.shape[1] - 1
    row_lo = torch.arange(num_rows, device=mass.device, dtype=dtype) * width  # (R,)
    # each token's piece in each row, in row-local x: (B, N, R), empty pieces have x0 == x1
    x0 = (torch.maximum(token_edges[:, :-1, None], row_lo) - row_lo).clamp(0, width)
    x1 = (torch.minimum(token_edges[:, 1:, None], row_lo + width) - row_lo).clamp(0, width)
    x1 = torch.maximum(x0, x1)
    cells_x = torch.arange(grid_size + 1, device=mass.device, dtype=dtype) * (width / grid_size)
    cells_y = torch.arange(grid_size + 1, device=mass.device, dtype=dtype) * (height / grid_size)
    overlap_x = interval_overlap(x0.reshape(batch, -1), x1.reshape(batch, -1), cells_x[:-1], cells_x[1:])
    overlap_x = overlap_x.view(batch, num_tokens, num_rows, grid_size)  # (B, N, R, Gx)
    overlap_y = interval_overlap(row_edges[:, :-1], row_edges[:, 1:], cells_y[:-1], cells_y[1:])  # (B, R, Gy)
    row_height = (row_edges[:, 1:] - row_edges[:, :-1]).clamp(min=0)  # (B, R)
    area = ((x1 - x0) * row_height[:, None, :]).sum(-1)  # (B, N)
    per_pixel = torch.where(area > 0, mass / area.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(mass))
    return torch.einsum("bn,bnrx,bry->byx", per_pixel, overlap_x, overlap_y).reshape(batch, grid_size * grid_size)


def cls_attention_mass(attention: torch.Tensor, cls_index: int) -> torch.Tensor:
    """The cls token's attention to each patch token, averaged over the heads and renormalised to sum 1.

    `attention`: `(batch, heads, length, length)` softmax weights of one layer (the last, usually); returns
    `(batch, length - 1)`, the patch tokens in order (the cls token's own entry removed).
    """
    _check_tensor(attention, "attention", 4)
    row = attention[:, :, cls_index].mean(dim=1)  # (B, L)
    mass = torch.cat([row[:, :cls_index], row[:, cls_index + 1 :]], dim=1)
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mass.dtype).tiny)


def rollout_mass(attentions: list[torch.Tensor] | tuple[torch.Tensor, ...], cls_index: int) -> torch.Tensor:
    """Attention rollout (each layer's head-averaged attention mixed half-and-half with the identity for the
    residual, rows renormalised, multiplied from the first layer to the last): the cls row over the patch tokens,
    renormalised to sum 1, `(batch, length - 1)`."""
    if not isinstance(attentions, (list, tuple)) or not attentions:
        raise ValueError("`attentions` must be a non-empty list of (batch, heads, length, length) tensors.")
    rollout = None
    for index, attention in enumerate(attentions):
        _check_tensor(attention, f"attentions[{index}]", 4)
        mixed = 0.5 * attention.mean(dim=1) + 0.5 * torch.eye(attention.shape[-1], device=attention.device,
                                                                dtype=attention.dtype)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    row = rollout[:, cls_index]
    mass = torch.cat([row[:, :cls_index], row[:, cls_index + 1 :]], dim=1)
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mass.dtype).tiny)


def gradient_mass(gradient: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """`|sum_d gradient * token|` per token (gradient times input), renormalised to sum 1: `(batch, num_tokens)`
    from `(batch, num_tokens, dim)` tokens and the loss's gradient with respect to them."""
    _check_tensor(gradient, "gradient", 3)
    _check_tensor(tokens, "tokens", 3)
    if gradient.shape != tokens.shape:
        raise ValueError(f"`gradient` {tuple(gradient.shape)} and `tokens` {tuple(tokens.shape)} must match.")
    mass = (gradient * tokens).sum(dim=-1).abs()
    return mass / mass.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(mass.dtype).tiny)


def sharpen(target: torch.Tensor, power: float) -> torch.Tensor:
    """`target ** power`, renormalised over the last dimension (`power > 1` sharpens a target density)."""
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ValueError(f"`power` must be a positive number, got {power!r}.")
    powered = target.clamp(min=0) ** power
    return powered / powered.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(powered.dtype).tiny)


def density_distillation_loss(pdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`KL(target || pdf)` per image, averaged over the batch, with the target detached (no gradient reaches
    whatever produced it). Both are `(batch, cells)` densities; the target is renormalised to sum 1, the pdf is
    taken as given (a strictly positive density that sums to 1, as `DartEmbeddingsOutput.pdf`)."""
    _check_tensor(pdf, "pdf", 2)
    _check_tensor(target, "target", 2)
    if pdf.shape != target.shape:
        raise ValueError(f"`pdf` {tuple(pdf.shape)} and `target` {tuple(target.shape)} must have the same shape.")
    target = target.detach()
    target = target / target.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(target.dtype).tiny)
    pdf = pdf.clamp(min=torch.finfo(pdf.dtype).tiny)
    return (torch.xlogy(target, target) - target * pdf.log()).sum(dim=-1).mean()


def _cell_overlap(cells_in: int, cells_out: int) -> torch.Tensor:
    """`(cells_out, cells_in)` float64: the fraction of each input cell (along one axis, both grids spanning the same
    extent) that lies in each output cell; every column sums to 1."""
    edges_in = torch.arange(cells_in + 1, dtype=torch.float64) / cells_in
    edges_out = torch.arange(cells_out + 1, dtype=torch.float64) / cells_out
    lo = torch.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = torch.minimum(edges_out[1:, None], edges_in[None, 1:])
    return (hi - lo).clamp(min=0) * cells_in


def resample_mass(mass: torch.Tensor, size: int) -> torch.Tensor:
    """Move a mass map from one regular grid onto another over the same canvas.

    Args:
        mass (`(batch, h, w)`): a mass per cell of an `h x w` grid.
        size (`int`): the side of the output grid.

    Returns:
        `(batch, size, size)`, in `mass`'s dtype and device: each input cell's mass shared among the output cells it
        overlaps, in proportion to the overlapping area, so the total per image is conserved (a finer output spreads
        a cell evenly over its sub-cells, a coarser one sums the cells it covers).
    """
    if not isinstance(mass, torch.Tensor) or mass.dim() != 3:
        raise ValueError(f"`mass` must be a (batch, h, w) tensor, got {getattr(mass, 'shape', type(mass))}.")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}.")
    rows = _cell_overlap(mass.shape[1], size).to(device=mass.device, dtype=mass.dtype)
    columns = _cell_overlap(mass.shape[2], size).to(device=mass.device, dtype=mass.dtype)
    return rows @ mass @ columns.T


def attention_scores(attention: torch.Tensor, grid: int, max_ratio: float, power: float = 1.0,
                     spread: int = 1) -> torch.Tensor:
    """A score map from an attention over feature cells (the `"mil"` scorer head's density).

    Args:
        attention (`(batch, h, w)`): non-negative, e.g. `MilEvidenceHead`'s attention (each image's sums to 1).
        grid (`int`): the side of the score grid.
        max_ratio (`float`): the largest ratio between two cells' scores (> 1).
        power (`float`, defaults to 1.0): the mass is raised to this power (< 1 flattens the peak over its
            neighbours, > 1 sharpens it).
        spread (`int`, defaults to 1): odd; each grid cell's mass is first averaged with its neighbours' over a
            `spread x spread` window (cells outside the grid do not count), which widens a peak by `spread // 2`
            cells on each side.

    Returns:
        `(batch, grid, grid)`: `m ** power`, `m` the attention moved onto the grid by `resample_mass` (mass conserved)
        then averaged over `spread`, floored at `1 / max_ratio` of each image's largest cell.
    """
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not power > 0:
        raise ValueError(f"`power` must be a positive number, got {power!r}.")
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, float)) or not 1 < max_ratio < float("inf"):
        raise ValueError(f"`max_ratio` must be a finite number > 1, got {max_ratio!r}.")
    if isinstance(spread, bool) or not isinstance(spread, int) or spread < 1 or spread % 2 == 0:
        raise ValueError(f"`spread` must be a positive odd int, got {spread!r}.")
    mass = resample_mass(attention, grid).clamp(min=0)
    if spread > 1:
        mass = nn.functional.avg_pool2d(mass[:, None], spread, 1, spread // 2, count_include_pad=False)[:, 0]
    mass = mass ** power
    return torch.maximum(mass, mass.amax((-2, -1), keepdim=True) / max_ratio)


class MilEvidenceHead(nn.Module):
    """Gated-attention multiple-instance classifier whose instances are the cells of a feature map.

    Each cell's features are layer-normalised and embedded (`relu(embed(norm(x)))`, `hidden` channels); each cell
    gets an attention logit `attention_w . (tanh(attention_v h) * sigmoid(attention_u h))`, softmax over the cells;
    the class logits come from `classifier` applied to the attention-weighted mean embedding. Trained on the image
    labels alone, its attention says which cells the class was read from, which makes it a target for the scorer's
    density (`resample_mass` onto the score grid, then `density_distillation_loss`).

    Args:
        channels (`int`): the feature map's channels.
        num_labels (`int`): the number of classes.
        hidden (`int`, defaults to 128): the cell embedding's width.
        attention_hidden (`int`, defaults to 64): the width of the gated attention's two branches.
    """

    def __init__(self, channels: int, num_labels: int, hidden: int = 128, attention_hidden: int = 64):
        super().__init__()
        for name, value in (("channels", channels), ("num_labels", num_labels), ("hidden", hidden),
                            ("attention_hidden", attention_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        self.norm = nn.LayerNorm(channels)
        self.embed = nn.Linear(channels, hidden)
        self.attention_v = nn.Linear(hidden, attention_hidden)
        self.attention_u = nn.Linear(hidden, attention_hidden)
        self.attention_w = nn.Linear(attention_hidden, 1)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` `(batch, channels, h, w)` -> class logits `(batch, num_labels)` and the attention over the
        cells `(batch, h, w)` (each image's sums to 1)."""
        _check_tensor(features, "features", 4)
        h = torch.relu(self.embed(self.norm(features.flatten(2).transpose(1, 2))))  # (batch, h * w, hidden)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        attention = torch.softmax(self.attention_w(gate)[..., 0], dim=-1)
        logits = self.classifier((attention[..., None] * h).sum(1))
        return logits, attention.view(features.shape[0], *features.shape[2:])


def pretrain_scorer_on_evidence(model, batches, steps: int, learning_rate: float,
                                evidence_learning_rate: float | None = None, warmup_fraction: float = 0.1,
                                ) -> list[float]:
    """Train the scorer and the evidence head of a `DartForImageClassification` alone, before the backbone's
    training: the head on the labels, the scorer towards the head's attention (`model.evidence_loss`); with the mil
    scorer head, that head on the labels. The backbone never runs and no other parameter changes, so the backbone then
    trains on a placement that already follows the evidence instead of one that moves while the head learns.

    Args:
        model (`DartForImageClassification`): with an `evidence_head` (`config.scorer_evidence_weight > 0`) or the
            mil scorer head (`config.scorer_head == "mil"`, whose parameters then train at `evidence_learning_rate`).
        batches (iterable of dicts): `pixel_values` `(batch, 3, height, width)` and integer `labels` `(batch,)`, e.g.
            a `DataLoader`; iterated again from its start when it runs out.
        steps (`int`): optimizer steps (0: nothing happens).
        learning_rate (`float`): the scorer's AdamW rate (no weight decay), after a linear warm-up over
            `warmup_fraction` of the steps and a cosine decay to 0.
        evidence_learning_rate (`float`, *optional*): the evidence head's rate; defaults to `learning_rate`.
        warmup_fraction (`float`, defaults to 0.1): the warm-up's share of the steps, in [0, 1).

    Returns:
        `list[float]`: the loss of every step. The model is left in the training mode it had, with no gradients.
    """
    head = model.evidence_module() if callable(getattr(model, "evidence_module", None)) else None
    if head is None:
        raise ValueError("`model` must be a DartForImageClassification with an evidence head "
                         "(`config.scorer_evidence_weight` > 0) or the mil scorer head (`config.scorer_head='mil'`).")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`steps` must be an int >= 0, got {steps!r}.")
    rates = {"learning_rate": learning_rate,
             "evidence_learning_rate": learning_rate if evidence_learning_rate is None else evidence_learning_rate}
    for name, value in rates.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
    if not isinstance(warmup_fraction, (int, float)) or not 0 <= warmup_fraction < 1:
        raise ValueError(f"`warmup_fraction` must be in [0, 1), got {warmup_fraction!r}.")
    embeddings = model.dart.embeddings
    in_head = {id(p) for p in head.parameters()}
    scorer = [p for p in embeddings.scorer.parameters() if p.requires_grad and id(p) not in in_head]
    groups = [{"params": list(head.parameters()), "lr": rates["evidence_learning_rate"]}]
    if scorer:
        groups.append({"params": scorer, "lr": rates["learning_rate"]})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [group["lr"] for group in optimizer.param_groups]
    warmup = int(warmup_fraction * steps)
    device = head.embed.weight.device
    was_training = model.training
    model.train()
    losses, iterator = [], iter(batches)
    try:
        for step in range(steps):
            try:
                batch = next(iterator)
            except StopIteration:
                iterator = iter(batches)
                batch = next(iterator)
            if step < warmup:
                factor = (step + 1) / (warmup + 1)
            else:
                factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            for group, rate in zip(optimizer.param_groups, base):
                group["lr"] = rate * factor
            pixel_values = batch["pixel_values"].to(device)
            score_map, features = embeddings.compute_scores(pixel_values, return_features=True)
            loss = model.evidence_loss(features, score_map, batch["labels"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return losses


__all__ = ["MilEvidenceHead", "attention_scores", "cls_attention_mass", "density_distillation_loss", "gradient_mass",
           "pretrain_scorer_on_evidence", "resample_mass", "rollout_mass", "sharpen", "token_mass_to_grid"]
