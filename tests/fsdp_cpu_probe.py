"""Run by tests/test_training_recipe.py under `torch.distributed.run --nproc_per_node 2`: shard a tiny DART model with
FSDP2 (`fully_shard` on the units examples/accelerate_configs/fsdp.yaml wraps: the embeddings and every block) on
CPU/gloo, train one step with each process on half of a batch, and compare the gathered weights with one unsharded
model trained on the whole batch. Writes `fsdp_probe.json` into the folder given as the first argument."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from modeling_dart import DartForImageClassification  # noqa: E402
from modeling_dart.embeddings_dart import DartEmbeddings  # noqa: E402
from modeling_dart.modeling_dart import DartLayer  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def build():
    torch.manual_seed(0)
    # frozen trunk: BatchNorm statistics fixed, batch-independent. The saliency head (the quick start's) has the
    # one-element parameters `prior_weight` and `log_temperature`, which FSDP2 refused while they were 0-d.
    return DartForImageClassification(tiny_config(scorer_head="saliency"))


def step(model, pixels, labels):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(pixels, labels=labels).loss.backward()
    optimizer.step()


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(4, 3, 64, 64, generator=generator)
    labels = torch.randint(0, 5, (4,), generator=generator)

    reference = build()
    initial = {k: v.clone() for k, v in reference.state_dict().items()}
    step(reference, pixels, labels)

    sharded = build()
    for module in sharded.modules():
        if isinstance(module, (DartLayer, DartEmbeddings)):
            fully_shard(module)
    fully_shard(sharded)
    share = pixels.shape[0] // world
    step(sharded, pixels[rank * share : (rank + 1) * share], labels[rank * share : (rank + 1) * share])
    is_sharded = all(isinstance(p, DTensor) for p in sharded.parameters())
    gathered = {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach()
                for name, p in sharded.named_parameters()}
    expected = dict(reference.named_parameters())
    difference = max(float((gathered[name] - expected[name]).abs().max()) for name in expected)
    moved = max(float((expected[name] - initial[name]).abs().max()) for name in expected)
    if rank == 0:
        Path(sys.argv[1], "fsdp_probe.json").write_text(json.dumps({
            "world_size": world, "sharded": is_sharded, "max_weight_difference": difference, "weights_moved": moved,
        }))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
