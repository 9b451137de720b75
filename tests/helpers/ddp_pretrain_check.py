"""Launched by torchrun from tests/test_ssl_pretrain.py: pretrain a few steps on 2 processes,
then gather every rank's weights and report whether they are identical."""

from __future__ import annotations

import hashlib
import json
import sys

import torch
import torch.distributed as dist

from orthofm.ssl import load_config, pretrain
from orthofm.ssl.export import load_run


def main() -> None:
    data, out, objective = sys.argv[1], sys.argv[2], sys.argv[3]
    config = load_config(None, sys.argv[4:], data=[data], out=out, objective=objective)
    torch.set_num_threads(1)
    pretrain(config)
    meta, state = load_run(out)
    digest = hashlib.sha256()
    for name, tensor in sorted(meta.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().numpy().tobytes())
    digests: list = [None] * dist.get_world_size()
    dist.all_gather_object(digests, (digest.hexdigest(), int(state["step"])))
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps({"world": dist.get_world_size(), "digests": digests}), flush=True)
    dist.barrier()  # neither rank tears gloo down while the other still has work queued on it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
