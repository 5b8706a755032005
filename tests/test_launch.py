"""dleval.launch: the rank a launcher gives, the device each rank binds, and the torch thread defaults.

Run: pytest tests/test_launch.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dleval import launch
from dleval.errors import UserError


def test_no_launcher_is_rank_0_of_1():
    assert launch.rank_of({}) == launch.Rank(0, 1, 0, 1, "none")


def test_torchrun_and_accelerate_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert launch.rank_of(env) == launch.Rank(3, 4, 1, 2, "torchrun")


def test_slurm_variables_without_a_launcher():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    assert launch.rank_of(env) == launch.Rank(5, 8, 1, 4, "slurm")


def test_inconsistent_launcher_variables_are_one_sentence():
    with pytest.raises(UserError, match="does not fit its world size"):
        launch.rank_of({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="RANK='x' is not an integer"):
        launch.rank_of({"RANK": "x", "WORLD_SIZE": "2"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback is for machines without CUDA")
def test_cuda_request_without_cuda_falls_back_to_cpu_with_a_note():
    notes = []
    assert launch.device_for("cuda:0", launch.Rank(), notes.append) == torch.device("cpu")
    assert notes == ["no CUDA device: running on cpu instead of cuda:0"]
    assert launch.device_for(None, launch.Rank(1, 2, 1, 2, "torchrun")) == torch.device("cpu")
    assert launch.device_for("cpu", launch.Rank()) == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'nosuch'"):
        launch.device_for("nosuch", launch.Rank())


def test_thread_defaults_divide_the_usable_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr(launch, "usable_cores", lambda: 16)
    alone = launch.choose_threads(env={}, rank=launch.Rank())
    assert (alone.intra_op, alone.source, alone.wait_policy) == (launch.THREAD_CAP, "default", "PASSIVE")
    four = launch.choose_threads(env={}, rank=launch.Rank(0, 8, 0, 4, "torchrun"))
    assert four.intra_op == 4 and four.ranks_on_node == 4
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    assert launch.choose_threads(env={}, rank=launch.Rank(0, 4, 0, 4, "torchrun")).intra_op == 1  # never 0


def test_explicit_threads_win_in_order(monkeypatch):
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert launch.choose_threads(env=env, rank=launch.Rank()).intra_op == 3
    assert launch.choose_threads(env=env, rank=launch.Rank()).wait_policy == "ACTIVE"  # the user's setting is kept
    assert launch.choose_threads(5, env=env, rank=launch.Rank()).source == "--threads"
    with pytest.raises(UserError, match="OMP_NUM_THREADS='two'"):
        launch.choose_threads(env={"OMP_NUM_THREADS": "two"}, rank=launch.Rank())
    with pytest.raises(UserError, match="--threads must be a positive number"):
        launch.choose_threads(0, env={}, rank=launch.Rank())


def test_cli_applies_and_records_the_thread_settings(tmp_path):
    """`dleval run` applies the defaults once at startup and writes them into config.json."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    cmd = [sys.executable, "-m", "dleval", "run", "--decoder", "llada", "--task", "synth_gsm", "--limit", "1",
           "--out", str(tmp_path), "--no-progress", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (config,) = tmp_path.glob("*/config.json")
    settings = json.loads(config.read_text())["environment"]["thread_settings"]
    assert settings["intra_op"] == 1 and settings["source"] == "--threads" and settings["wait_policy"] == "PASSIVE"
    assert settings["cores"] == launch.usable_cores()
    bad = subprocess.run([*cmd[:-1], "0"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--threads must be a positive number" in bad.stderr
