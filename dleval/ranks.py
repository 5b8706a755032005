"""Where this process stands in a data-parallel launch: rank, world size, local rank, invocation id.

Read from the environment the launchers users already have set (no process manager of our own,
no collective): `torchrun` and `accelerate launch` set RANK / WORLD_SIZE / LOCAL_RANK; SLURM's
`srun` sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID (taken only inside a job step, i.e. when
SLURM_STEP_ID is set, so a batch script's own shell is not mistaken for rank 0 of N).

The **invocation** id names one dleval command invocation: every rank of one launch and every
point of one sweep share it, so that ranks agree on a new run folder without talking and a
report can tell numbers measured side by side from numbers measured hours apart. It is the
launcher's id when there is one (TORCHELASTIC_RUN_ID, which `torchrun --standalone` and
`--rdzv-id` set, with the MASTER_PORT its rendezvous picked, so relaunching with the same
`--rdzv-id` is a new invocation; SLURM_JOB_ID.SLURM_STEP_ID), else `--run-id`, else a uuid4 made once per
process (only valid for a single process: ranks of a launch without an id cannot agree).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from dleval.errors import UserError

_PROCESS_ID = uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = ""  # "torchrun" (also accelerate), "slurm", or "" for a single process
    invocation: str = _PROCESS_ID
    named: bool = False  # the invocation id came from the launcher or --run-id (the same on every rank)

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size} ({self.launcher})" if self.launcher else "one process"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise UserError(f"the launcher set {key}={env[key]!r}, which is not a number") from None


def detect(env: Mapping[str, str] | None = None, run_id: str | None = None) -> Ranks:
    """The Ranks of this process; `run_id` (e.g. --run-id) overrides the invocation id."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = _int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
        launcher = "torchrun"
        launch_id = env.get("TORCHELASTIC_RUN_ID", "")
        launch_id = "" if launch_id in ("", "none") else launch_id  # torchrun's default without --standalone/--rdzv-id
        if launch_id and env.get("MASTER_PORT"):  # a relaunch with the same --rdzv-id gets a new port from its rendezvous
            launch_id = f"{launch_id}.{env['MASTER_PORT']}"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        rank, world, local = (
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_NTASKS"),
            _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
        )
        launcher = "slurm"
        step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
        launch_id = f"slurm-{env['SLURM_JOB_ID']}.{step}" if env.get("SLURM_JOB_ID") else ""
    else:
        return Ranks(invocation=run_id or _PROCESS_ID, named=bool(run_id))
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"the launcher says rank {rank} of {world} processes, which is impossible")
    invocation = run_id or launch_id
    if world > 1 and not invocation:
        raise UserError(
            f"{launcher} gave no run id the {world} processes share: pass --run-id NAME (the same on every rank), "
            "or use `torchrun --standalone` / `--rdzv-id`"
        )
    return Ranks(rank, world, local, launcher, invocation or _PROCESS_ID, named=bool(invocation))
