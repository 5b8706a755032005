"""Fast-dLLM KV caches vs no cache: wall-clock ratio at gen_length 256 on the bundled tiny model.

Run: python benchmarks/cache_speedup.py [--problems 30] [--repeats 5] [--threads 1] [--model tiny]

Decodes the same synth_gsm problems with `fastdllm` (threshold 0.9, block 32, gen_length 256)
under cache = none, prefix and dual; everything else is equal. One warm-up pass is excluded;
then the configurations run interleaved (none, prefix, dual, none, ...) so that load on a
shared machine hits them alike, and each configuration's time is the median over repeats of
its total decode time over all problems. Prints a table and, last, one JSON line. Accuracy is
scored by the task's own scorer; "same as none" is the share of problems whose tokens equal the
no-cache output. The issue 3 target is dual >= 2.5x faster than none with the same accuracy.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from dleval import models, prompts, tasks
from dleval.decoders import fastdllm
from dleval.models.base import Counted
from dleval.scorers import completion_of

CACHES = ("none", "prefix", "dual")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = models.load(args.model, device="cpu")
    spec = tasks.load_task("synth_gsm")
    samples = tasks.load_samples(spec)[: args.problems]
    ids = [prompts.render(s, spec.prompt, loaded.tokenizer).ids for s in samples]
    counted = Counted(loaded.model)
    eos = {counted.eos_id} | ({counted.eot_id} if counted.eot_id is not None else set())
    cfgs = {
        c: fastdllm.Config(gen_length=args.gen_length, block_length=args.block_length, threshold=args.threshold, cache=c) for c in CACHES
    }

    def decode_all(cache: str) -> tuple[float, list, int, int]:
        counted.reset()
        t0 = time.perf_counter()
        gens = [fastdllm.decode(counted, [p], cfgs[cache])[0] for p in ids]
        return time.perf_counter() - t0, gens, counted.nfe, counted.positions

    for cache in CACHES:  # warm-up, excluded
        decode_all(cache)
    times: dict[str, list[float]] = {c: [] for c in CACHES}
    outputs = {}
    for _ in range(args.repeats):
        for cache in CACHES:
            seconds, gens, nfe, positions = decode_all(cache)
            times[cache].append(seconds)
            outputs[cache] = (gens, nfe, positions)

    rows = {}
    for cache in CACHES:
        gens, nfe, positions = outputs[cache]
        correct = 0.0
        for sample, gen in zip(samples, gens):
            _, completion, _ = completion_of(gen.tokens, loaded.tokenizer, spec.prompt.stop, eos)
            correct += tasks.score(spec, sample, completion).correct
        seconds = statistics.median(times[cache])
        rows[cache] = {
            "accuracy": correct / len(samples),
            "mean_nfe": nfe / len(samples),
            "positions_per_sample": positions / len(samples),
            "seconds_per_sample": seconds / len(samples),
            "same_as_none": sum(g == n for g, n in zip(gens, outputs["none"][0])) / len(samples),
            "speedup_vs_none": statistics.median(times["none"]) / seconds,
        }

    print(f"fastdllm threshold={args.threshold} block={args.block_length} gen={args.gen_length}, {len(samples)} synth_gsm problems,")
    print(
        f"model {loaded.name}, {args.repeats} repeats (median), {args.threads} thread(s), CPU {platform.processor() or platform.machine()}"
    )
    print(f"{'cache':8s} {'acc':>6s} {'NFE':>7s} {'positions':>10s} {'s/sample':>9s} {'same':>6s} {'speedup':>8s}")
    for cache, r in rows.items():
        print(
            f"{cache:8s} {r['accuracy']:6.3f} {r['mean_nfe']:7.2f} {r['positions_per_sample']:10.0f} "
            f"{r['seconds_per_sample']:9.4f} {r['same_as_none']:6.2f} {r['speedup_vs_none']:7.2f}x"
        )
    print(json.dumps({"benchmark": "cache_speedup", "args": vars(args), "device": "cpu", "results": rows}))


if __name__ == "__main__":
    main()
