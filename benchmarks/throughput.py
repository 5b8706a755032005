"""Batched decoding throughput: samples/s, model calls and accuracy at batch 1 vs batch 16, and whether batching changed any output.

Run: python benchmarks/throughput.py [--limit 500] [--batch 16] [--threads 1] [--decoders fastdllm,dparallel,eb,llada] [-D cache=delayed]

For every decoder that decodes batches (`BATCHED = True`), with its bundled CPU model and the
synth_gsm generation hints (what `dleval run --task synth_gsm` uses; T = 0), the first `--limit`
synth_gsm problems are decoded at batch 1 and at batch `--batch` (the batch-1 pass first, then
the batched one, per decoder). Reported per decoder and batch size: samples/s (decode wall only;
scoring excluded), model calls per sample (forwards of the model, whatever their batch), mean
NFE per sample (forwards that computed the sample: must not change with the batch), accuracy
(the task's scorer). Then the agreement of batch B with batch 1: completions (tokens) identical,
and per-sample NFE identical. Issue 14's targets: identical outputs and NFE at T = 0; model
calls per sample at batch 16 at most 1/8 of batch 1; wall at batch 16 >= 1.2x batch 1 for
fastdllm, dparallel and eb. Timings are wall clock on whatever machine runs it: `os.getloadavg`
is printed next to them. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/throughput.py` from a checkout

from dleval import decoders, models, options, prompts, tasks  # noqa: E402
from dleval.models.base import Counted  # noqa: E402
from dleval.resolve import decoder_config  # noqa: E402
from dleval.scorers import completion_of  # noqa: E402


def decode_all(module, cfg, counted: Counted, ids: list[list[int]], batch: int) -> tuple[float, int, list, list[int]]:
    """(seconds, model calls, generations, NFE per sample) for all prompts in chunks of `batch`."""
    calls, gens, nfe = 0, [], []
    t0 = time.perf_counter()
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        counted.reset()
        gens += module.decode(counted, chunk, cfg)
        calls += counted.nfe
        nfe += counted.row_nfe(len(chunk))
    return time.perf_counter() - t0, calls, gens, nfe


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decoders", default=",".join(n for n in decoders.names() if decoders.info(n).batched))
    parser.add_argument(
        "-D",
        dest="decoder_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="decoder parameter for every decoder listed, as `dleval run -D` (repeatable)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec = tasks.load_task("synth_gsm")
    samples = tasks.load_samples(spec)[: args.limit]
    rows = []
    for name in [decoders.canonical(n.strip()) for n in args.decoders.split(",") if n.strip()]:
        info = decoders.info(name)
        module = decoders.load(name)
        loaded = models.load(info.cpu_model, device="cpu")
        cfg = decoder_config(module, spec.generation, options.parse_pairs(args.decoder_args, "-D"), name)
        ids = [prompts.render(s, spec.prompt, loaded.tokenizer).ids for s in samples]
        eos = {loaded.model.eos_id} | ({loaded.model.eot_id} if loaded.model.eot_id is not None else set())
        counted = Counted(loaded.model)
        module.decode(counted, ids[: min(2, len(ids))], cfg)  # warm-up
        result = {}
        for batch in (1, args.batch):
            seconds, calls, gens, nfe = decode_all(module, cfg, counted, ids, batch)
            texts = [completion_of(g.tokens, loaded.tokenizer, spec.prompt.stop, eos)[1] for g in gens]
            correct = sum(tasks.score(spec, s, t).correct for s, t in zip(samples, texts))
            result[batch] = dict(seconds=seconds, calls=calls, gens=gens, nfe=nfe, accuracy=100 * correct / len(samples))
        one, many = result[1], result[args.batch]
        row = dict(
            decoder=name,
            model=info.cpu_model,
            samples=len(samples),
            samples_per_s_1=len(samples) / one["seconds"],
            samples_per_s_b=len(samples) / many["seconds"],
            speedup=one["seconds"] / many["seconds"],
            calls_per_sample_1=one["calls"] / len(samples),
            calls_per_sample_b=many["calls"] / len(samples),
            nfe_mean=sum(one["nfe"]) / len(samples),
            accuracy_1=one["accuracy"],
            accuracy_b=many["accuracy"],
            same_completion=sum(a.tokens == b.tokens for a, b in zip(one["gens"], many["gens"])) / len(samples),
            same_nfe=sum(a == b for a, b in zip(one["nfe"], many["nfe"])) / len(samples),
        )
        rows.append(row)
        print(
            f"{name:<10} {row['samples_per_s_1']:7.2f} -> {row['samples_per_s_b']:7.2f} samples/s ({row['speedup']:.2f}x)  "
            f"calls/sample {row['calls_per_sample_1']:6.2f} -> {row['calls_per_sample_b']:5.2f}  NFE {row['nfe_mean']:.2f}  "
            f"acc {row['accuracy_1']:.1f} / {row['accuracy_b']:.1f}  same tokens {100 * row['same_completion']:.1f}%  "
            f"same NFE {100 * row['same_nfe']:.1f}%",
            flush=True,
        )
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{len(samples)} synth_gsm problems, batch 1 vs {args.batch}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load}")  # fmt: skip
    out = {
        "limit": len(samples),
        "batch": args.batch,
        "threads": args.threads,
        "decoder_args": args.decoder_args,
        "load": load,
        "rows": rows,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
