"""Running on several processes and machines with PyTorch's own engine: torchrun + DistributedDataParallel.

A process started by `torchrun` finds RANK, WORLD_SIZE and LOCAL_RANK in its environment;
`session()` joins the process group (NCCL on CUDA, gloo on the CPU) for the length of a command,
gives it a `Distributed` context, and leaves the group with the other processes. Without torchrun
the context is a single process and nothing here communicates. A failure on one rank is shared
with all (`agree`, `check_all`), so every rank stops with the same error instead of waiting for the
others; the process group's timeout bounds any wait.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .. import errors
from ..errors import ConfigError, PSPNetError
from .device import resolve_device

T = TypeVar("T")

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("PSPNET_DIST_TIMEOUT", "600")))
"""How long a collective may wait for the other processes (env PSPNET_DIST_TIMEOUT, seconds)."""
LEAVE_TIMEOUT = datetime.timedelta(seconds=30)
"""How long a process that failed waits for the others before it leaves the process group."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: rank, world size, and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str) -> Distributed:
    """This process's context; joins the process group when started by torchrun with WORLD_SIZE > 1."""
    if not launched_by_torchrun():
        return Distributed(device=resolve_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Distributed(rank, world_size, local_rank, device)


@contextlib.contextmanager
def session(device_name: str) -> Iterator[Distributed]:
    """`setup()` for the block, then leave the process group. The processes first wait for each other,
    so that none closes its connections while another is still communicating (gloo can abort a process
    then). After an error (which `agree`/`check_all` share, so all ranks usually leave together) the wait
    is bounded: a gloo barrier that gives up after LEAVE_TIMEOUT, none on NCCL."""
    context = setup(device_name)
    try:
        yield context
    except BaseException:
        if context.active and dist.get_backend() == "gloo":
            with contextlib.suppress(RuntimeError):
                dist.monitored_barrier(timeout=LEAVE_TIMEOUT)
        _leave()
        raise
    if context.active:
        dist.barrier()
    _leave()


def _leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(context: Distributed, action: Callable[[], T]) -> T:
    """`action()` on every rank; when it fails with a PSPNetError on any rank, every rank raises that error
    (naming the rank), so that no process starts while another could not."""
    failure = None
    try:
        result = action()
    except PSPNetError as exc:
        failure = exc
        result = None
    check_all(context, failure)
    return result


def check_all(context: Distributed, failure: PSPNetError | None, stop: bool = False) -> bool:
    """Raise, on every rank, the first PSPNetError any rank had (None: this rank is fine); else whether any
    rank asked to `stop`. One small all-reduce when there are several processes."""
    if not context.active:
        if failure is not None:
            raise failure
        return stop
    flags = torch.tensor([0.0 if failure is None else 1.0, float(stop)], device=_collective_device(context))
    dist.all_reduce(flags)
    if flags[0].item() == 0:
        return bool(flags[1].item())
    reports: list[Any] = [None] * context.world_size
    dist.all_gather_object(reports, None if failure is None else (type(failure).__name__, str(failure)))
    if failure is not None:
        raise failure
    rank, (kind, message) = next((rank, report) for rank, report in enumerate(reports) if report is not None)
    raise getattr(errors, kind, PSPNetError)(f"rank {rank}: {message}")


def broadcast(context: Distributed, value: T) -> T:
    """Rank 0's `value` on every rank (pickled between this job's own processes)."""
    if not context.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device(context: Distributed) -> torch.device:
    return context.device if context.device.type == "cuda" else torch.device("cpu")


def all_reduce_sum(context: Distributed, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every rank (in place; returned)."""
    if context.active:
        moved = tensor.to(_collective_device(context))
        dist.all_reduce(moved)
        tensor.copy_(moved)
    return tensor


def gather(context: Distributed, value: Any) -> list[Any]:
    """Every rank's `value`, in rank order."""
    if not context.active:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def shard(items: Sequence[T], context: Distributed) -> list[T]:
    """This rank's items: every world_size-th from its rank on, so that each item goes to exactly one rank."""
    return list(items[context.rank :: context.world_size])


def split_batch(batch_size: int, context: Distributed, sync_bn: bool) -> int:
    """This rank's share of the global batch; ConfigError when the processes cannot share it evenly."""
    if batch_size % context.world_size:
        raise ConfigError(
            f"train.batch_size: the global batch of {batch_size} does not divide among "
            f"{context.world_size} processes; choose a multiple of {context.world_size}"
        )
    local = batch_size // context.world_size
    if local < 2 and not sync_bn:
        raise ConfigError(
            f"train.batch_size: {local} image per process; BatchNorm needs 2 without train.sync_bn "
            "(turn it on, or use a larger batch)"
        )
    return local
