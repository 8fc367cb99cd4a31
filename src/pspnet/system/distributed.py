"""Running on several processes and machines with PyTorch's own engine: torchrun + DistributedDataParallel.

A process started by `torchrun` finds RANK, WORLD_SIZE and LOCAL_RANK in its environment;
`session()` joins the process group (NCCL on CUDA, gloo on the CPU) for the length of a command,
gives it a `Distributed` context, and leaves the group with the other processes. Without torchrun
the context is a single process and nothing here communicates. A failure on one rank is shared
with all (`agree`, `check_all`), so every rank stops with the same error instead of waiting for the
others; the process group's timeout bounds any wait. A process that dies or stops answering is found
by its heartbeat (`Heartbeat`): the others raise `LostProcess`, naming it, within PSPNET_DIST_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .. import errors
from ..errors import ConfigError, PSPNetError
from .device import resolve_device

T = TypeVar("T")

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("PSPNET_DIST_TIMEOUT", "60")))
"""How long a collective may wait for the other processes (env PSPNET_DIST_TIMEOUT, seconds): after it, a
process that gave no answer (hung, stopped) is reported lost."""
LEAVE_TIMEOUT = datetime.timedelta(seconds=30)
"""How long a process that failed waits for the others before it leaves the process group."""
HEARTBEAT_S = 1.0
"""How often each process counts up its heartbeat in the job's store."""


class LostProcess(PSPNetError):
    """Another process of the job died, stopped answering, or left with an error of its own."""


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


def restarted() -> bool:
    """Whether torchrun restarted this job's workers (after a failure, or when its membership changed)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def restarts_left() -> int:
    """How many more times torchrun restarts the workers after a failure (0 without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) - int(
        os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    )


class Heartbeat:
    """A thread that counts up this process's key in the job's key-value store (the TCPStore at
    MASTER_ADDR:MASTER_PORT) every HEARTBEAT_S: a process that died or was stopped stops counting, and
    one that leaves says how (`sign_off`). The keys are the job's own: rank 0 draws their prefix."""

    def __init__(self, context: Distributed):
        self.rank, self.world_size = context.rank, context.world_size
        prefix = broadcast(context, secrets.token_hex(8))
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout=TIMEOUT)
        self.store = dist.PrefixStore(f"pspnet/{prefix}/", store)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pspnet-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while True:
            try:
                self.store.add(f"beat/{self.rank}", 1)
            except RuntimeError:  # the store's host is gone: the job is ending
                return
            if self._stop.wait(HEARTBEAT_S):
                return

    def sign_off(self, outcome: str) -> None:
        """Stop beating and record why this process leaves: "ok", "error" or "lost" (it saw another one lost)."""
        self._stop.set()
        with contextlib.suppress(RuntimeError):
            self.store.set(f"left/{self.rank}", outcome)

    def lost(self) -> LostProcess | None:
        """After a failed collective: the error naming the processes that stopped beating without signing
        off (watched for 3 beats), or that left with an error; None when every other one is alive."""
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        try:
            before = {rank: self.store.add(f"beat/{rank}", 0) for rank in others}
            time.sleep(3 * HEARTBEAT_S)
            lost, failed = [], []
            for rank in others:
                if self.store.check([f"left/{rank}"]):
                    if self.store.get(f"left/{rank}") == b"error":
                        failed.append(rank)
                elif self.store.add(f"beat/{rank}", 0) == before[rank]:
                    lost.append(rank)
        except RuntimeError:
            return LostProcess("lost the job's store (its launcher, or rank 0, died)")
        parts = [f"rank {rank} was lost (it died, or gave no answer within {TIMEOUT.seconds} s)" for rank in lost]
        parts += [f"rank {rank} stopped with an error (see its output)" for rank in failed]
        return LostProcess("; ".join(parts)) if parts else None


SLURM_PORT_BASE = 20000
"""Under `srun` without MASTER_PORT, the job meets on port SLURM_PORT_BASE + SLURM_JOB_ID % 40000 of its first node."""


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list, compact ranges included: `node[01-03,07],gpu5` -> `node01`."""
    first = re.match(r"(?:[^,\[]|\[[^\]]*\])+", nodelist.strip())
    if first is None:
        raise ConfigError(f"cannot read the first host of the SLURM node list '{nodelist}'; set MASTER_ADDR")
    return re.sub(r"\[([^\],-]*)[^\]]*\]", r"\1", first.group(0))


def started_by_srun(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task that `srun` started without torchrun (its RANK came from SLURM_PROCID)."""
    procid = environ.get("SLURM_PROCID")
    return procid is not None and "TORCHELASTIC_RUN_ID" not in environ and environ.get("RANK") == procid


def use_slurm_environment(environ: MutableMapping[str, str] = os.environ) -> bool:
    """In a task of a job step that `srun` started (SLURM_STEP_ID is set; the batch script itself is no such
    task) and not torchrun (RANK is unset): set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (the step's first
    node, unless set) and MASTER_PORT (unless set) from SLURM's variables. Returns whether it did."""
    if "RANK" in environ or not {"SLURM_STEP_ID", "SLURM_PROCID", "SLURM_NTASKS"} <= environ.keys():
        return False
    if "MASTER_ADDR" not in environ:
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
        if not nodes:
            raise ConfigError("SLURM_PROCID is set but no SLURM_STEP_NODELIST or SLURM_JOB_NODELIST; set MASTER_ADDR")
        environ["MASTER_ADDR"] = first_slurm_host(nodes)
    environ.setdefault("MASTER_PORT", str(SLURM_PORT_BASE + int(environ.get("SLURM_JOB_ID", "0")) % 40000))
    environ["RANK"], environ["WORLD_SIZE"] = environ["SLURM_PROCID"], environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    return True


def setup(device_name: str) -> Distributed:
    """This process's context; joins the process group when started by torchrun (or `srun`) with WORLD_SIZE > 1."""
    use_slurm_environment()
    if not launched_by_torchrun():
        return Distributed(device=resolve_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _join("nccl" if device.type == "cuda" else "gloo", rank, world_size)
    return Distributed(rank, world_size, local_rank, device)


def _join(backend: str, rank: int, world_size: int) -> None:
    """Join the process group. Under torchrun the workers meet in the launcher's store, which outlives them
    and still holds the addresses the workers before a restart published there (joining with those fails
    or hangs): each generation of workers gets keys of its own, numbered by how many joined before it."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend, timeout=TIMEOUT)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout=TIMEOUT)
    key = f"pspnet/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{world_size}"
    generation = (store.add(f"{key}/joined", 1) - 1) // world_size
    prefixed = dist.PrefixStore(f"{key}/{generation}/", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world_size, timeout=TIMEOUT)


@contextlib.contextmanager
def session(device_name: str) -> Iterator[Distributed]:
    """`setup()` for the block, then leave the process group. The processes first wait for each other,
    so that none closes its connections while another is still communicating (gloo can abort a process
    then). After an error (which `agree`/`check_all` share, so all ranks usually leave together) the wait
    is bounded: a gloo barrier that gives up after LEAVE_TIMEOUT, none on NCCL. A collective that failed
    because another process was lost raises `LostProcess` at once."""
    context = setup(device_name)
    heartbeat = None
    try:
        heartbeat = Heartbeat(context) if context.active else None
        yield context
        if context.active:
            dist.barrier()
    except BaseException as exc:
        if heartbeat is not None and isinstance(exc, RuntimeError) and not isinstance(exc, PSPNetError):
            _ignore_stop_signals()
            lost = heartbeat.lost()
            if lost is not None:
                heartbeat.sign_off("lost")
                raise lost from None  # no goodbye: the others are gone or about to see the same
        if heartbeat is not None:
            heartbeat.sign_off("error")
        if context.active and dist.get_backend() == "gloo":
            with contextlib.suppress(RuntimeError):
                dist.monitored_barrier(timeout=LEAVE_TIMEOUT)
        _leave()
        raise
    if heartbeat is not None:
        heartbeat.sign_off("ok")
    _leave()


def _ignore_stop_signals() -> None:
    """Ignore SIGINT/SIGTERM from now on (main thread only): this process leaves on an error, and torchrun,
    which stops the other workers when one dies, should not cut short its report of which one."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


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
            f"{context.world_size} processes; choose a multiple of {context.world_size}, or run on "
            f"{', '.join(str(n) for n in range(1, batch_size + 1) if batch_size % n == 0)} processes"
        )
    local = batch_size // context.world_size
    if local < 2 and not sync_bn:
        raise ConfigError(
            f"train.batch_size: {local} image per process; BatchNorm needs 2 without train.sync_bn "
            "(turn it on, or use a larger batch)"
        )
    return local
