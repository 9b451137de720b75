"""Launched by torchrun from tests/test_ssl_centering.py: Sinkhorn-Knopp targets of half a batch per rank
must equal the single-process targets of the whole batch."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist

from orthofm.ssl.losses import sinkhorn_knopp


def main() -> None:
    torch.manual_seed(0)
    logits = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1) @ torch.nn.functional.normalize(
        torch.randn(8, 8), dim=-1).t()  # cosines, like the DINO head's
    whole = sinkhorn_knopp(logits, 0.1)  # no process group yet: the single-process targets of the whole batch
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    part = sinkhorn_knopp(logits.chunk(world)[rank], 0.1)
    gathered = [torch.zeros_like(part) for _ in range(world)]
    dist.all_gather(gathered, part)
    if rank == 0:
        print("RESULT " + json.dumps({"max_diff": (torch.cat(gathered) - whole).abs().max().item()}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
