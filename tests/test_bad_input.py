"""Bad input found by the new-user audit (issue 10): each is one sentence naming the bad value and
exit 2, never a traceback and never accepted silently.

Families: devices, model folders (config.json and weights), data files, decoder settings.
Run: pytest tests/test_bad_input.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dleval.cli import main
from dleval.models import CHECKPOINTS

RUN = ["run", "--decoder", "llada", "--task", "synth_gsm", "--limit", "1", "--no-progress"]


def one_sentence(capsys, argv: list[str], tmp_path: Path) -> str:
    """Run the CLI, require exit 2 and one `dleval: error:` line; return that line."""
    assert main([*argv, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("dleval: error:"), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


# --- devices -------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path):
    msg = one_sentence(capsys, [*RUN, "--device", "cuda"], tmp_path)
    assert "device 'cuda'" in msg and "no CUDA device" in msg and "--device cpu" in msg


@pytest.mark.parametrize("device", ["nosuch", "cuda:x", "meta"])
def test_unknown_device(capsys, tmp_path, device):
    msg = one_sentence(capsys, [*RUN, "--device", device], tmp_path)
    assert f"'{device}'" in msg and "cpu, cuda" in msg


# --- model folders -------------------------------------------------------------------------


@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(CHECKPOINTS / "tiny", folder)
    return folder


def _set_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_config_that_is_a_json_array(capsys, tmp_path, tiny_copy):
    (tiny_copy / "config.json").write_text("[1, 2]")
    msg = one_sentence(capsys, [*RUN, "--model", str(tiny_copy)], tmp_path)
    assert "config.json" in msg and "not a JSON object" in msg and str(tiny_copy) in msg


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"d_model": -8}, "d_model must be a positive integer, not -8"),
        ({"n_layers": 0}, "n_layers must be a positive integer, not 0"),
        ({"vocab_size": "many"}, "vocab_size must be a positive integer"),
        ({"n_heads": 3}, "must be a multiple of n_heads (3)"),
        ({"rope_theta": -1.0}, "rope_theta must be a positive number"),
        ({"mask_token_id": 100000}, "mask_token_id must be a token id below embedding_size (348)"),
    ],
)
def test_config_with_impossible_values(capsys, tmp_path, tiny_copy, changes, fragment):
    _set_config(tiny_copy, **changes)
    msg = one_sentence(capsys, [*RUN, "--model", str(tiny_copy)], tmp_path)
    assert "invalid config.json" in msg and fragment in msg


def test_config_whose_shapes_do_not_match_the_weights(capsys, tmp_path, tiny_copy):
    _set_config(tiny_copy, mlp_hidden_size=392)  # the weights have 384
    msg = one_sentence(capsys, [*RUN, "--model", str(tiny_copy)], tmp_path)
    assert "do not match its config.json" in msg and "[128, 384]" in msg and "[128, 392]" in msg


# --- data files ----------------------------------------------------------------------------

GOOD = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2.\n#### 2"}


def _data_dir(tmp_path: Path, test_lines: bytes) -> Path:
    root = tmp_path / "data"
    (root / "gsm8k").mkdir(parents=True)
    good = (json.dumps(GOOD) + "\n").encode()
    (root / "gsm8k" / "train.jsonl").write_bytes(good * 10)  # the few-shot pool
    (root / "gsm8k" / "test.jsonl").write_bytes(good * 2 + test_lines)
    return root


@pytest.mark.parametrize(
    "line,fragment",
    [
        (b'{"question": "x", \n', "line 3 is not valid JSON"),
        (b'{"answer": "#### 3"}\n', "line 3 has no 'question' field (it has: answer)"),
        (b"[1, 2]\n", "line 3 is not a JSON object"),
        (b"\x00\x82\xff\xfe binary\n", "line 3 is not UTF-8 text"),
    ],
    ids=["malformed", "missing-field", "not-an-object", "binary"],
)
def test_bad_data_file_names_file_and_line(capsys, tmp_path, line, fragment):
    root = _data_dir(tmp_path, line)
    argv = ["run", "--decoder", "llada", "--task", "gsm8k", "--limit", "1", "--data-dir", str(root)]
    msg = one_sentence(capsys, argv, tmp_path)
    assert str(root / "gsm8k" / "test.jsonl") in msg and fragment in msg


def test_bad_mbpp_record_names_either_field(tmp_path):
    from dleval import tasks
    from dleval.errors import UserError

    (tmp_path / "mbpp").mkdir()
    (tmp_path / "mbpp" / "mbpp.jsonl").write_text(json.dumps({"task_id": 11, "code": "", "test_list": []}) + "\n")
    with pytest.raises(UserError, match=r"line 1 has no 'text' or 'prompt' field"):
        tasks.load_samples(tasks.load_task("mbpp"), tmp_path)


# --- decoder settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "decoder,setting,fragment",
    [
        ("fastdllm", "threshold=nan", "threshold must be a number, not nan"),
        ("fastdllm", "threshold=2", "threshold must be between 0 and 1, not 2"),
        ("dparallel", "threshold=-1", "threshold must be >= 0, not -1"),
        ("d3llm", "threshold=-1", "threshold must be >= 0, not -1"),
        ("d3llm", "threshold=inf", "threshold must be finite, not inf"),
        ("eb", "gamma=-1", "gamma must be >= 0, not -1"),
        ("eb", "gamma=nan", "gamma must be a number, not nan"),
        ("llada", "temperature=nan", "temperature must be a number, not nan"),
        ("llada", "temperature=-0.5", "temperature must be >= 0"),
        ("llada", "cfg_scale=inf", "cfg_scale must be finite"),
        ("dparallel", "temperature=inf", "temperature must be finite"),
        ("learn2pd", "accept_threshold=nan", "accept_threshold must be between 0 and 1"),
        ("learn2pd", "temperature=nan", "temperature must be a number"),
        ("prophet", "early_threshold=nan", "early_threshold must be a number, not nan"),
        ("prophet", "late_threshold=-1", "late_threshold must be >= 0"),
        ("d3llm", "block_add_threshold=nan", "block_add_threshold must be between 0 and 1"),
    ],
)
def test_decoder_settings_out_of_range(capsys, tmp_path, decoder, setting, fragment):
    argv = ["run", "--decoder", decoder, "--task", "synth_gsm", "--limit", "1", "-D", setting]
    msg = one_sentence(capsys, argv, tmp_path)
    assert fragment in msg and "invalid decoder" in msg


def test_every_decoder_rejects_nan_in_every_float_field():
    """No float field of any decoder accepts NaN (a new decoder's Config must validate too)."""
    import dataclasses
    import typing

    from dleval import decoders, options
    from dleval.errors import UserError

    for name in decoders.names():
        cls = decoders.load(name).Config
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if float in (hints[f.name], *typing.get_args(hints[f.name])):
                with pytest.raises(UserError, match="nan|between"):
                    options.build(cls, {f.name: "nan"}, f"decoder '{name}'")


def test_paper_thresholds_stay_valid():
    from dleval import decoders, options

    for name, settings in [("fastdllm", {"threshold": "1.0"}), ("fastdllm", {"threshold": "0"}), ("prophet", {"early_threshold": "inf"})]:
        options.build(decoders.load(name).Config, settings, name)


# --- the real entry point ------------------------------------------------------------------


def test_no_traceback_from_the_command(tmp_path, tiny_copy):
    """Through `python -m dleval`, so nothing between main() and the shell adds a traceback."""
    (tiny_copy / "config.json").write_text("[]")
    root = _data_dir(tmp_path, b"\xff\xfe\n")
    cases = [
        [*RUN, "--device", "nosuch"],
        [*RUN, "--model", str(tiny_copy)],
        ["run", "--decoder", "llada", "--task", "gsm8k", "--limit", "1", "--data-dir", str(root)],
        ["run", "--decoder", "fastdllm", "--task", "synth_gsm", "-D", "threshold=nan"],
    ]
    code = (
        "import sys, runpy\n"
        "for argv in CASES:\n"
        "    sys.argv = ['dleval', *argv]\n"
        "    try:\n"
        "        runpy.run_module('dleval', run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        print('EXIT', e.code, file=sys.stderr)\n"
    ).replace("CASES", repr([[*c, "--out", str(tmp_path / "runs")] for c in cases]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("EXIT 2") == len(cases), done.stderr
    assert done.stderr.count("dleval: error:") == len(cases)
