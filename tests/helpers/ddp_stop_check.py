"""Launched by torchrun from tests/test_ssl_stopping.py: SIGTERM reaches rank 1 only, mid-run, while time-based
checkpoints fall due at slightly different moments on each rank. Both ranks must stop at the same step with one
checkpoint (no hang, no mismatched collectives) and report it."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

from orthofm.ssl import PretrainingStopped, load_config
from orthofm.ssl import train as train_module
from orthofm.ssl.stopping import StopRequest


class _SignalRankOneSoon(StopRequest):
    """Installs the handlers, then (rank 1 only) sends this process SIGTERM a little later, mid-training."""

    def __enter__(self):  # returns self, like the base
        entered = super().__enter__()
        if int(os.environ["RANK"]) == 1:
            threading.Timer(float(os.environ.get("STOP_AFTER_S", "2.0")),
                            lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
        return entered


def main() -> None:
    data, out = sys.argv[1], sys.argv[2]
    config = load_config(None, sys.argv[3:], data=[data], out=out, objective="mae+dino")
    torch.set_num_threads(1)
    train_module.StopRequest = _SignalRankOneSoon  # type: ignore[misc]
    stopped_at, signum = -1, 0
    try:
        train_module.pretrain(config)
    except PretrainingStopped as stopped:
        stopped_at, signum = stopped.step, stopped.signum
    steps: list = [None] * dist.get_world_size()
    dist.all_gather_object(steps, (stopped_at, signum))
    if dist.get_rank() == 0:
        ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
        print("RESULT " + json.dumps({"stopped": steps, "checkpoint_step": int(ckpt["step"])}), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
