"""Code-task scoring off the critical path: a run's wall time against decode time + scoring time.

Run: python benchmarks/scoring_overlap.py [--task mbpp] [--limit 50] [--data-dir ../shared/data]
                                          [-D gen_length=64 ...] [-T shots=0 ...]

Runs `dleval run` in-process (scoring of code tasks goes to a thread pool while the next batch
decodes), then scores the same completions again one after another, as the loop did before,
to measure the scoring time alone. Prints the loop's wall time (from the first decode to the
merge: model loading and prompt rendering are not part of the loop), the sum of the Records'
decode seconds, the serial scoring time, and whether loop wall < decode + scoring (the overlap). The bundled tiny
model has 512 positions, so the defaults shorten the prompt (0 shots) and the canvas (64) and
record the few prompts that still do not fit as errors. One JSON line last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from dleval import loop, options, results, tasks
from dleval.run import RunRequest, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mbpp")
    ap.add_argument("--decoder", default="llada")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=os.environ.get("DLEVAL_DATA_DIR"))
    ap.add_argument("-D", dest="decoder_args", action="append", default=["gen_length=64", "block_length=64", "steps=16"])
    ap.add_argument("-T", dest="task_args", action="append", default=["shots=0"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        req = RunRequest(
            decoder=args.decoder, task=args.task, model=args.model, limit=args.limit, batch_size=args.batch_size,
            decoder_args=options.parse_pairs(args.decoder_args), task_args=options.parse_pairs(args.task_args, "-T"),
            out_dir=Path(out), data_dir=Path(args.data_dir) if args.data_dir else None, progress=False, too_long="record",
        )  # fmt: skip
        marks: dict[str, float] = {}
        real_decode, real_merge = loop._decode_batch, results.merge

        def decode(*a, **k):
            marks.setdefault("first_decode", time.perf_counter())
            return real_decode(*a, **k)

        def merge(*a, **k):
            marks.setdefault("merge", time.perf_counter())
            return real_merge(*a, **k)

        loop._decode_batch, results.merge = decode, merge
        t0 = time.perf_counter()
        try:
            result = run(req, log=lambda m: None)
        finally:
            loop._decode_batch, results.merge = real_decode, real_merge
        total = time.perf_counter() - t0
        wall = marks["merge"] - marks["first_decode"]
    spec = tasks.load_task(args.task, req.task_args)
    by_id = {s.id: s for s in tasks.load_samples(spec, req.data_dir)}
    scored = [r for r in result.records if not r.error]
    t0 = time.perf_counter()
    for r in scored:
        tasks.score(spec, by_id[r.sample_id], r.completion)
    scoring = time.perf_counter() - t0
    decode = sum(r.seconds for r in scored)
    print(
        f"{args.task} --limit {args.limit} · {args.decoder} · {args.model}  ({platform.processor() or platform.machine()}, {args.threads} thread)"
    )
    print(f"  samples scored        {len(scored)} ({len(result.records) - len(scored)} recorded as errors)")
    print(f"  wall time of the loop {wall:8.1f} s   (first decode to merge; the whole run took {total:.1f} s with loading)")
    print(f"  decode time (sum)     {decode:8.1f} s")
    print(f"  scoring time (serial) {scoring:8.1f} s")
    print(
        f"  overlapped            {'yes' if wall < decode + scoring else 'no'}: wall {wall:.1f} s vs decode + scoring {decode + scoring:.1f} s"
    )
    print(
        json.dumps(
            {
                "task": args.task,
                "limit": args.limit,
                "scored": len(scored),
                "loop_wall_s": wall,
                "run_wall_s": total,
                "decode_s": decode,
                "scoring_s": scoring,
            }
        )
    )


if __name__ == "__main__":
    main()
