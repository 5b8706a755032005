"""The lm-eval front end against the REAL lm-evaluation-harness package (skipped when it is not installed).

Offline, as users run it: local task YAMLs (`dataset_path: json` + `data_files`) over GSM8K's
test file in the benchmark data folder and over `synth_gsm` problems written to a JSONL, the
bundled tiny model, `python -m dleval.harness` as a subprocess, once in one process and once
under `torchrun --nproc-per-node 2` (gloo on CPU). Data: $DLEVAL_DATA_DIR, else ../shared/data.

Run: pytest tests/test_lm_eval.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dleval.tasks import synth_gsm

pytest.importorskip("lm_eval", reason="the real lm-eval package is not installed (pip install -e '.[test]')")

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 3
MODEL_ARGS = "decoder=llada,model=tiny,gen_length=32,block_length=32,steps=32"

# lm-eval's gsm8k prompt and target over the local file; the answer after "####" is the target.
GSM8K = """task: local_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/gsm8k/test.jsonl
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until: ["Question:"]
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

# synth_gsm, the tiny model's own task: the chat prompt is the one it was trained on, the answer
# ends in "#### N". The pre-filled variant opens the assistant's turn with the answer's first
# number (lm-eval's gen_prefix, as mbpp_instruct opens it with ```python).
SYNTH = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{value}}}}"
{prefix}generation_kwargs:
  until: ["\\n\\n"]
  do_sample: false
filter_list:
  - name: strict
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    env = os.environ.get("DLEVAL_DATA_DIR")
    data = Path(env) if env else ROOT.parent / "shared" / "data"
    if not (data / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"benchmark data not found at {data} (set DLEVAL_DATA_DIR)")
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    jsonl = folder / "synth_gsm.jsonl"
    with jsonl.open("w") as f:
        for i in range(LIMIT):
            p = synth_gsm.problem("test", i)
            f.write(json.dumps({"question": p.question, "answer": p.answer, "value": str(p.value)}) + "\n")
    (folder / "gsm8k.yaml").write_text(GSM8K.format(data=data.resolve()))
    (folder / "synth.yaml").write_text(SYNTH.format(name="local_synth", jsonl=jsonl, prefix=""))
    prefix = "gen_prefix: \"{{answer.split(' ')[0]}}\"\n"  # the start number, e.g. "5"
    (folder / "synth_prefill.yaml").write_text(SYNTH.format(name="local_synth_prefill", jsonl=jsonl, prefix=prefix))
    return folder


def harness_cmd(task_dir: Path, out: Path, tasks: str, model_args: str = MODEL_ARGS) -> list[str]:
    return [
        "-m", "dleval.harness", "--model", "dleval",
        "--model_args", f"{model_args},speed_log={out / 'speed.jsonl'}",
        "--tasks", tasks, "--include_path", str(task_dir), "--limit", str(LIMIT),
        "--apply_chat_template", "--log_samples", "--output_path", str(out),
    ]  # fmt: skip


def env() -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def samples_of(out: Path) -> dict[str, dict[int, dict]]:
    """{task: {doc_id: logged sample}} from lm-eval's --log_samples files."""
    found: dict[str, dict[int, dict]] = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        found[task] = {(r := json.loads(line))["doc_id"]: r for line in path.read_text().splitlines()}
    return found


def prompt_of(sample: dict) -> str:
    args = sample["arguments"]
    return args["gen_args_0"]["arg_0"] if isinstance(args, dict) else args[0][0]


@pytest.fixture(scope="module")
def single(task_dir, tmp_path_factory):
    """One process, the CLI exactly as the README shows it (no --device: lm-eval passes cuda:0)."""
    out = tmp_path_factory.mktemp("lm_eval_single")
    tasks = "local_gsm8k,local_synth,local_synth_prefill"
    proc = subprocess.run(
        [sys.executable, *harness_cmd(task_dir, out, tasks)], capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_single_process_run_on_a_local_task(single):
    out, proc = single
    if not torch.cuda.is_available():  # lm-eval's default device is cuda:0; dleval falls back as `dleval run` does
        assert "no CUDA device: running on cpu instead of cuda:0" in proc.stderr
    assert "request/s" in proc.stderr or "s/request" in proc.stderr  # the progress bar with its rate and ETA
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert set(results) == {"local_gsm8k", "local_synth", "local_synth_prefill"}
    samples = samples_of(out)
    assert {t: len(s) for t, s in samples.items()} == {"local_gsm8k": LIMIT, "local_synth": LIMIT, "local_synth_prefill": LIMIT}
    for s in samples["local_gsm8k"].values():  # cut at `until`, special tokens stripped
        assert "Question:" not in s["resps"][0][0] and "<|" not in s["resps"][0][0]
    rows = [json.loads(line) for line in (out / "speed.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * LIMIT and all(r["nfe"] == 32 and r["rank"] == 0 for r in rows)
    # The tiny model solves its own task through lm-eval's prompt, request and filter path.
    assert results["local_synth"]["exact_match,strict"] == 1.0


def test_pre_filled_assistant_turn_is_continued(single):
    out, _ = single
    samples = samples_of(out)
    for doc_id, s in samples["local_synth_prefill"].items():
        p = synth_gsm.problem("test", doc_id)
        start = p.answer.split(" ")[0]
        # The prompt ends in the pre-filled answer start, not in a closed turn (`...5<|eot_id|>`).
        assert prompt_of(s).endswith(f"<|start_header_id|>assistant<|end_header_id|>\n\n{start}")
        assert prompt_of(samples["local_synth"][doc_id]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # The model continues its own answer after the prefix and still reaches the right value.
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert results["local_synth_prefill"]["exact_match,strict"] == 1.0


def test_model_args_typo_is_one_sentence_and_exit_2(task_dir, tmp_path, monkeypatch, capsys):
    """In-process (`harness.main` with lm-eval's real CLI) to spare a second lm-eval start-up."""
    from dleval import harness

    cmd = harness_cmd(task_dir, tmp_path, "local_synth", model_args="decoder=llada,modle=tiny")
    monkeypatch.setattr(sys, "argv", ["dleval.harness", *cmd[2:]])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert harness.main() == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dleval.harness: error: --model_args has no key 'modle' (did you mean 'model'?)")


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(), reason="no torchrun")
def test_torchrun_two_ranks_split_requests_and_gather(task_dir, single, tmp_path):
    """`torchrun --nproc-per-node 2 -m dleval.harness ... --batch_size 2`: each rank decodes its share
    in batches of two, rank 0 reports all, every completion as one process decoding one at a time."""
    out = tmp_path / "out"
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    tasks = "local_gsm8k,local_synth_prefill"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", *harness_cmd(task_dir, out, tasks), "--batch_size", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one, two = samples_of(single[0]), samples_of(out)
    for task in tasks.split(","):
        assert sorted(two[task]) == list(range(LIMIT))  # gathered on rank 0: every document once
        for doc_id, s in two[task].items():  # same prompt and completion as one process (T = 0)
            # (a rank with fewer requests repeats its last one so that ranks stay in step: extra resps)
            assert prompt_of(s) == prompt_of(one[task][doc_id]) and s["resps"][0][0] == one[task][doc_id]["resps"][0][0]
            assert s["filtered_resps"] == one[task][doc_id]["filtered_resps"]
    assert not (out / "speed.jsonl").exists()
    per_rank = {r: [json.loads(x) for x in (out / f"speed.rank-{r}-of-2.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert all(row["rank"] == r for r, rows in per_rank.items() for row in rows)
    # lm-eval deals documents i % 2 == rank and pads the shorter rank with a repeat of its last request.
    hashes = [{row["prompt_hash"] for row in rows} for rows in per_rank.values()]
    assert not hashes[0] & hashes[1] and len(hashes[0] | hashes[1]) == 2 * LIMIT
    assert {row["batch_size"] for rows in per_rank.values() for row in rows} == {2}  # each rank: 2 requests per task
