"""dleval.launch: the device each rank binds and the torch thread defaults.

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
from dleval.ranks import Ranks


def test_ranks_on_node_from_the_launcher():
    assert launch.ranks_on_node(Ranks(), {}) == 1
    assert launch.ranks_on_node(Ranks(3, 4, 1, "torchrun"), {"LOCAL_WORLD_SIZE": "2"}) == 2
    assert launch.ranks_on_node(Ranks(5, 8, 1, "slurm"), {"SLURM_NTASKS_PER_NODE": "4(x2)"}) == 4
    assert launch.ranks_on_node(Ranks(1, 2, 1, "torchrun"), {}) == 2  # no per-node count: assume one node


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback is for machines without CUDA")
def test_cuda_request_without_cuda_falls_back_to_cpu_with_a_note():
    notes = []
    assert launch.device_for("cuda:0", Ranks(), notes.append) == torch.device("cpu")
    assert notes == ["no CUDA device: running on cpu instead of cuda:0"]
    assert launch.device_for(None, Ranks(1, 2, 1, "torchrun")) == torch.device("cpu")
    assert launch.device_for("cpu", Ranks()) == torch.device("cpu")
    with pytest.raises(UserError, match="unknown device 'nosuch'"):
        launch.device_for("nosuch", Ranks())


def test_thread_defaults_divide_the_usable_cores_among_local_ranks(monkeypatch):
    monkeypatch.setattr(launch, "usable_cores", lambda: 16)
    alone = launch.choose_threads(env={}, rank=Ranks())
    assert (alone.intra_op, alone.source, alone.wait_policy) == (launch.THREAD_CAP, "default", "PASSIVE")
    four = launch.choose_threads(env={"LOCAL_WORLD_SIZE": "4"}, rank=Ranks(0, 8, 0, "torchrun"))
    assert four.intra_op == 4 and four.ranks_on_node == 4
    monkeypatch.setattr(launch, "usable_cores", lambda: 2)
    assert launch.choose_threads(env={}, rank=Ranks(0, 4, 0, "torchrun")).intra_op == 1  # never 0


def test_explicit_threads_win_in_order(monkeypatch):
    env = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert launch.choose_threads(env=env, rank=Ranks()).intra_op == 3
    assert launch.choose_threads(env=env, rank=Ranks()).wait_policy == "ACTIVE"  # the user's setting is kept
    assert launch.choose_threads(5, env=env, rank=Ranks()).source == "--threads"
    with pytest.raises(UserError, match="OMP_NUM_THREADS='two'"):
        launch.choose_threads(env={"OMP_NUM_THREADS": "two"}, rank=Ranks())
    with pytest.raises(UserError, match="--threads must be a positive number"):
        launch.choose_threads(0, env={}, rank=Ranks())


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


def test_entry_points_do_not_load_torch_before_the_thread_settings():
    """OMP_WAIT_POLICY is read when torch loads its OpenMP runtime: `dleval` and `dleval.harness`
    must not import torch before `configure_threads` has run."""
    code = "import sys, dleval.cli, dleval.harness; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
