"""Many processes (torchrun): PyTorch's process group and DDP, with the few collectives the loop needs.

A single process is the same code with world size 1, where every collective is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files, prints and shows progress."""
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's disjoint share of a global batch (all shares together: the whole batch)."""
        return idx[self.rank :: self.world]

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj):
        """The main process's value of `obj`, on every process."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init(device: str, timeout_s: float) -> Dist:
    """Join the process group that torchrun describes in the environment; a plain run gets world size 1.
    A collective that waits for the others longer than `timeout_s` raises (a lost host or link)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def job_id() -> str | None:
    """torchrun's `--rdzv-id`: the same on every host and across the job's restarts (None: not torchrun,
    or no id given)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    return run_id if run_id not in (None, "", "none") else None


def restarts() -> int:
    """How many times torchrun (`--max-restarts`) has restarted this host's workers after a failure. A
    host whose own workers were healthy is restarted as a membership change, which this does not count."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def is_restart_of(env: dict) -> bool:
    """Whether this process is torchrun restarting the job that wrote a run's environment record `env`."""
    return restarts() > 0 or (job_id() is not None and env.get("torchrun_job") == job_id())


def restart_hazard() -> str | None:
    """A warning for a torchrun job whose restarts may fail, else None.

    With `--max-restarts` and torchrun's default shared rendezvous store, the store outlives the failed
    attempt: a restarted process can read its peer's address from that attempt and fail to connect
    (pytorch/pytorch#135712; "Gloo connectFullMesh failed ... Connection refused" in 2 of 6 restarts on
    two hosts here). `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` gives every attempt a new store."""
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and shared:
        return (
            "torchrun --max-restarts with its shared rendezvous store can restart into the "
            "failed attempt's addresses (pytorch#135712): start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"
        )
    return None


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
