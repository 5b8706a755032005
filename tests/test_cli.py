"""The command line: bad input gives one sentence and exit 2, never a traceback.

Run: pytest tests/test_cli.py
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from dleval.cli import main


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "--decoder", "lladaa", "--task", "synth_gsm"], "unknown decoder 'lladaa' (did you mean 'llada'?)"),
        (["run", "--decoder", "llada", "--task", "gsm9k"], "unknown task 'gsm9k'"),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "--model", "tinny"], "unknown model 'tinny' (did you mean 'tiny'?)"),
        (
            ["run", "--decoder", "llada", "--task", "synth_gsm", "-D", "gen_lenght=8"],
            "has no parameter 'gen_lenght' (did you mean 'gen_length'?)",
        ),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "-D", "steps=many"], "steps='many' is not a valid"),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "-D", "steps"], "-D expects key=value"),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "-D", "block_length=8", "-D", "steps=7"], "multiple of the number of blocks"),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "-T", "shots=x"], "not a valid int"),
        (["run", "--decoder", "llada", "--task", "synth_gsm", "--limit", "0"], "--limit must be"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("dleval: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_missing_checkpoint_folder(capsys, tmp_path):
    folder = tmp_path / "nothing-here"
    folder.mkdir()
    assert main(["run", "--decoder", "llada", "--task", "synth_gsm", "--model", str(folder), "--out", str(tmp_path)]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_unwritable_output_folder_is_one_sentence(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = ["run", "--decoder", "llada", "--task", "synth_gsm", "--model", "tiny", "--limit", "1", "--out", str(blocker / "runs")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dleval: error:") and str(blocker) in err and len(err.splitlines()) == 1


def test_list_commands(capsys):
    assert main(["list", "decoders"]) == 0
    out = capsys.readouterr().out
    assert "llada" in out and "alias: vanilla" in out
    assert "defaults: gen_length=256 block_length=32 steps=None temperature=0.0" in out  # the README says they are shown
    assert "threshold=0.9" in out and "cache=prefix" in out  # fastdllm's
    assert main(["list", "tasks"]) == 0
    assert "synth_gsm" in capsys.readouterr().out
    assert main(["list", "models"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_console_entry_point_runs_and_prints_a_summary(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "dleval",
        "run",
        "--decoder",
        "vanilla",
        "--task",
        "synth_gsm",
        "--limit",
        "4",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "accuracy (strict-match)" in done.stdout and "mean NFE" in done.stdout
    assert "no CUDA device: using the bundled model 'tiny'" in done.stderr


def test_skip_idle_forward_is_recorded_and_shown(capsys, tmp_path):
    """The cheaper NFE count is an explicit option: recorded in config.json, named in the summary."""
    import json

    argv = ["run", "--decoder", "fastdllm", "--task", "synth_gsm", "--limit", "1", "--no-progress", "--out", str(tmp_path)]
    assert main([*argv, "-D", "gen_length=32", "-D", "block_length=8", "-D", "skip_idle_forward=true"]) == 0
    out = capsys.readouterr().out
    assert "skip_idle_forward=True" in out
    (config,) = tmp_path.rglob("config.json")
    assert json.loads(config.read_text())["decoder"]["config"]["skip_idle_forward"] is True
