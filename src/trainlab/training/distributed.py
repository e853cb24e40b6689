"""Data-parallel training on PyTorch's own engine: torch.distributed + torchrun.

torchrun starts one process per device and sets RANK / WORLD_SIZE / LOCAL_RANK; trainlab
joins the process group (gloo on CPU, NCCL on CUDA), wraps the model in
DistributedDataParallel, gives each rank an equal shard of every epoch, all-reduces the
metrics so every rank sees the same numbers, and lets rank 0 alone print and write files.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainlab.errors import ConfigError, TrainlabError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        warn_shared_store()
        # A bounded timeout: if a rank dies, the others fail here instead of waiting forever.
        seconds = float(os.environ.get("TRAINLAB_DIST_TIMEOUT", "120"))
        timeout = datetime.timedelta(seconds=seconds)
        with _watchdog(seconds + JOIN_GRACE_S):
            store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world, timeout=timeout))
            dist.init_process_group(backend, store=dist.PrefixStore(round_prefix(), store), rank=rank,
                                    world_size=world, timeout=timeout)
    return DistContext(rank, world, local)


# torchrun's elastic agent hosts one TCP store for all its restart rounds, and the process
# group's keys are the same each round: a restarted rank read its predecessor's key (a dead
# peer's address) and waited in gloo's connect ("Connection refused", connectFullMesh
# timeouts; its listening side has no timeout). Each round joins under its own prefix.
JOIN_GRACE_S = 30.0  # beyond the join timeout before the watchdog ends a stuck join


def round_prefix() -> str:
    """The store prefix of this restart round, where one torchrun agent's store outlives its
    rounds. Every rank under one agent has the same TORCHELASTIC_RESTART_COUNT; agents on
    several nodes may not (see warn_shared_store), and a fresh store needs no prefix."""
    one_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and \
        int(os.environ.get("GROUP_WORLD_SIZE", "1") or 1) == 1
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) if one_agent_store else 0
    return f"trainlab/round-{restart}"


def warn_shared_store() -> None:
    """Several nodes restart their agents' counts apart (a node whose ranks did not fail
    restarts without counting), so their round prefixes can differ: a fresh store per round
    is what keeps their rounds apart."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and \
            int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0 and \
            int(os.environ.get("GROUP_WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0")) == 0:
        print("trainlab: warning: torchrun restarts on several nodes with its store shared across rounds, "
              "where a restarted group can wait on a previous round's keys; launch every node with "
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _watchdog(seconds: float):
    """Joining the group either returns or ends the process: a join still waiting after
    `seconds` (one the timeouts below it did not catch) exits with one sentence, so torchrun
    sees a failed worker (and restarts the group) instead of waiting for ever."""
    done = threading.Event()

    def watch():
        if not done.wait(seconds):
            print(f"trainlab: error: could not connect the training processes within {seconds:g} s; start the "
                  "command again, or raise TRAINLAB_DIST_TIMEOUT (seconds, default 120) on a slow or busy "
                  "machine", file=sys.stderr, flush=True)
            os._exit(1)

    threading.Thread(target=watch, name="trainlab-join-watchdog", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def device_for(ctx: DistContext, requested: str) -> str:
    """Under CUDA DDP each process drives its own GPU: cuda:LOCAL_RANK."""
    if ctx.enabled and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return requested


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_over_ranks(value: int, device) -> int:
    """The largest of every rank's value, on every rank (e.g. the signal one rank received)."""
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool, device) -> bool:
    """True on every rank if any rank's flag is set (so all stop at the same step)."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """BatchNorm statistics are per rank (unless --sync-bn): evaluate rank 0's everywhere."""
    for b in module.buffers():
        dist.broadcast(b, src=0)


def broadcast_object(obj, ctx: DistContext):
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_decides(decide, ctx: DistContext):
    """Rank 0 alone runs `decide()` (it may clean, repair or move files); every rank gets its
    result, or raises the same TrainlabError, so no rank acts on a choice of its own."""
    outcome = None
    if ctx.is_main:
        try:
            outcome = {"value": decide()}
        except TrainlabError as e:
            broadcast_object({"error": str(e), "code": e.exit_code, "usage": isinstance(e, ConfigError)}, ctx)
            raise
    outcome = broadcast_object(outcome, ctx)
    if "error" in outcome:
        err = (ConfigError if outcome["usage"] else TrainlabError)(outcome["error"])
        err.exit_code = outcome["code"]
        raise err
    return outcome["value"]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def finish_together() -> None:
    """After a successful run: wait for every rank before the process group goes away."""
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> bool:
    """Leave the process group; True if there was one."""
    if dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False
