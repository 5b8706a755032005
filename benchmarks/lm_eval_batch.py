"""lm-eval front end throughput: requests/s at `--batch_size 1` vs N through the real lm-eval CLI, and whether batching changed any completion or NFE.

Run: python benchmarks/lm_eval_batch.py [--limit 64] [--batch 8] [--decoder fastdllm] [--model-args gen_length=40,block_length=40] [--threads 1]

Writes the first `--limit` synth_gsm test problems as a local lm-eval task (the bundled tiny
model's own task: chat prompt, "#### N" answer, exact match on N), then runs
`python -m dleval.harness --model dleval ... --apply_chat_template --log_samples` twice as a user
would, with `--batch_size 1` and `--batch_size N` (the batch-1 run first). Reported per run: the
process's wall time (lm-eval's start-up and task building included), the decode time (the sum of
the speed sidecar's synced per-request seconds), requests/s over that decode time, mean NFE and
exact match; then the agreement of batch N with batch 1: completions (lm-eval's logged
responses) and per-request NFE (speed sidecar, by prompt hash). Needs lm-eval
(`pip install -e '.[lm-eval]'`). Timings are wall clock on whatever machine runs it;
`os.getloadavg` is printed next to them. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python benchmarks/lm_eval_batch.py` from a checkout

from dleval.tasks import synth_gsm  # noqa: E402

TASK = """task: bench_synth
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{value}}}}"
generation_kwargs:
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


def run_once(folder: Path, size: int, args: argparse.Namespace) -> dict:
    out = folder / f"out-{size}"
    speed = out / "speed.jsonl"
    model_args = ",".join(
        x for x in (f"decoder={args.decoder},model=tiny,threads={args.threads}", args.model_args, f"speed_log={speed}") if x
    )
    cmd = [
        sys.executable, "-m", "dleval.harness", "--model", "dleval", "--model_args", model_args,
        "--tasks", "bench_synth", "--include_path", str(folder), "--limit", str(args.limit),
        "--apply_chat_template", "--log_samples", "--output_path", str(out), "--batch_size", str(size),
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lm-eval run at batch size {size} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in speed.read_text().splitlines()]
    (samples_file,) = out.rglob("samples_bench_synth_*.jsonl")
    samples = {(s := json.loads(line))["doc_id"]: s for line in samples_file.read_text().splitlines()}
    decode = sum(r["seconds"] for r in rows)
    return {
        "batch": size,
        "wall_s": wall,
        "decode_s": decode,
        "requests_per_s": len(rows) / decode,
        "mean_nfe": sum(r["nfe"] for r in rows) / len(rows),
        "exact_match": sum(s["exact_match"] for s in samples.values()) / len(samples),
        "completions": {d: s["resps"][0][0] for d, s in samples.items()},
        "nfe": {r["prompt_hash"]: r["nfe"] for r in rows},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--decoder", default="fastdllm")
    parser.add_argument(
        "--model-args", default="gen_length=40,block_length=40", help="more --model_args (synth_gsm's generation hints by default)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        jsonl = folder / "synth_gsm.jsonl"
        with jsonl.open("w") as f:
            for i in range(args.limit):
                p = synth_gsm.problem("test", i)
                f.write(json.dumps({"question": p.question, "value": str(p.value)}) + "\n")
        (folder / "bench_synth.yaml").write_text(TASK.format(jsonl=jsonl))
        one, many = run_once(folder, 1, args), run_once(folder, args.batch, args)

    same_text = sum(many["completions"][d] == t for d, t in one["completions"].items()) / len(one["completions"])
    same_nfe = sum(many["nfe"].get(h) == n for h, n in one["nfe"].items()) / len(one["nfe"])
    load = os.getloadavg()[0]
    print(
        f"{args.limit} synth_gsm requests through lm-eval, decoder {args.decoder}, {args.threads} thread(s), {platform.machine()}, load {load:.2f}"
    )
    print(f"{'batch':>5} {'wall s':>8} {'decode s':>9} {'req/s':>7} {'NFE':>6} {'exact':>6}")
    for r in (one, many):
        print(
            f"{r['batch']:>5} {r['wall_s']:8.1f} {r['decode_s']:9.2f} {r['requests_per_s']:7.2f} {r['mean_nfe']:6.2f} {r['exact_match']:6.3f}"
        )
    speedup = many["requests_per_s"] / one["requests_per_s"]
    print(
        f"batch {args.batch} vs 1: {speedup:.2f}x requests/s (decode time); completions identical {same_text:.0%}, NFE identical {same_nfe:.0%}"
    )
    keep = ("batch", "wall_s", "decode_s", "requests_per_s", "mean_nfe", "exact_match")
    result = {
        "limit": args.limit, "decoder": args.decoder, "threads": args.threads, "load": load,
        "runs": [{k: r[k] for k in keep} for r in (one, many)],
        "speedup": speedup, "same_completion": same_text, "same_nfe": same_nfe,
    }  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
