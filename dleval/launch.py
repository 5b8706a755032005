"""Where this process runs: its rank under a launcher, its device, and its torch threads.

The rank comes from `dleval.ranks` (torchrun, accelerate launch, srun); each rank binds
`cuda:LOCAL_RANK` when CUDA is present, else the CPU.

Threads. A CPU run that asks for more busy threads than the machine has free cores does not
slow down in proportion, it collapses: OpenMP threads spin-wait at every parallel region's
barrier (a 69 s job took 28 minutes while five jobs shared two cores; `benchmarks/threads.py`
measures the effect). The defaults here, applied once when a command starts (`configure_threads`), are:
  * intra-op threads = the cores this process may run on (`os.sched_getaffinity`, which honours
    `taskset`, cgroup cpusets and SLURM's binding) divided by the ranks on this node, at most
    `THREAD_CAP`, at least 1; an explicit `--threads N` or OMP_NUM_THREADS wins;
  * OMP_WAIT_POLICY=PASSIVE unless set: a waiting OpenMP thread sleeps instead of spinning,
    so it gives its core to whoever else needs it. It is read when the OpenMP runtime loads,
    so `configure_threads` must run before torch is imported (the CLI's entry points do).
The settings are recorded in each run's `config.json` (`environment.thread_settings`).

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dleval.errors import UserError
from dleval.ranks import Ranks, detect

if TYPE_CHECKING:
    import torch

THREAD_CAP = 8  # past ~8 threads the small per-step matmuls of a decode gain little and the barriers cost more


def ranks_on_node(ranks: Ranks, env: Mapping[str, str] | None = None) -> int:
    """Processes of this launch on this machine: LOCAL_WORLD_SIZE (torchrun, accelerate),
    SLURM_NTASKS_PER_NODE (srun; "4" or "4(x2)"), else the whole world."""
    env = os.environ if env is None else env
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = (env.get(key) or "").split("(")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return max(1, ranks.world_size)


def device_for(requested: str | None, rank: Ranks, log: Callable[[str], None] | None = None) -> torch.device:
    """The device a rank runs on: `cuda:LOCAL_RANK` with CUDA, else the CPU; an explicit choice wins
    except a CUDA device on a machine without CUDA (lm-eval passes `cuda:0` by default), which
    falls back to the CPU with a note, as `dleval run` does."""
    import torch

    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise UserError(f"unknown device '{requested}'; use cpu, cuda or cuda:N") from None
        if device.type != "cuda":
            return device
        if not torch.cuda.is_available():
            if log:
                log(f"no CUDA device: running on cpu instead of {requested}")
            return torch.device("cpu")
        if rank.world_size > 1:  # one default `cuda:0` for every rank would stack them all on GPU 0
            return torch.device("cuda", rank.local_rank % torch.cuda.device_count())
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{requested}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass(frozen=True)
class Threads:
    """The torch thread settings of this process and where they came from (recorded per run)."""

    intra_op: int
    cores: int  # CPUs this process may run on (sched_getaffinity)
    ranks_on_node: int
    source: str  # "--threads", "OMP_NUM_THREADS" or "default"
    wait_policy: str  # OMP_WAIT_POLICY as the OpenMP runtime saw it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: int | None = None, env: Mapping[str, str] | None = None, rank: Ranks | None = None) -> Threads:
    """The intra-op thread count: `requested`, else OMP_NUM_THREADS, else free cores per rank (capped)."""
    env = os.environ if env is None else env
    rank = rank or detect(env, run_id="threads")  # the invocation id plays no part here
    local = ranks_on_node(rank, env)
    cores = usable_cores()
    wait = env.get("OMP_WAIT_POLICY", "PASSIVE")
    if requested is not None:
        if requested <= 0:
            raise UserError(f"--threads must be a positive number, got {requested}")
        return Threads(requested, cores, local, "--threads", wait)
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp:
        if not omp.isdigit() or int(omp) <= 0:
            raise UserError(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']!r} is not a positive number of threads")
        return Threads(int(omp), cores, local, "OMP_NUM_THREADS", wait)
    return Threads(max(1, min(THREAD_CAP, cores // local)), cores, local, "default", wait)


_applied: Threads | None = None


def configure_threads(requested: int | None = None) -> Threads:
    """Choose and apply this process's thread settings; call once at startup, before torch is imported
    if possible (OMP_WAIT_POLICY is read when the OpenMP runtime loads)."""
    global _applied
    threads = choose_threads(requested)
    os.environ.setdefault("OMP_WAIT_POLICY", threads.wait_policy)
    import torch

    torch.set_num_threads(threads.intra_op)
    _applied = threads
    return threads


def current_threads() -> dict[str, Any]:
    """What this process runs with, for a run's recorded environment."""
    import torch

    applied = (
        _applied.as_dict() if _applied is not None else {"source": "not configured", "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    )
    return {**applied, "intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
