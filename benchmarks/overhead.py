"""Decoder overhead per step: the time each decoder spends outside the model forward, per forward, on the bundled tiny model.

Run: python benchmarks/overhead.py [--problems 30] [--threads 1] [--decoders fastdllm,llada] [--repeats 3]

Every decoder (paper defaults, the task's generation hints for synth_gsm) decodes the same
`--problems` synth_gsm problems one at a time, with `on_step=None` as in a run. A wrapper
(`_timing.TimedModel`) sums the time spent inside the model's forward; the decoder's overhead
per step is (decode time - forward time) / forwards, and its share is that over the mean
forward time. Both are measured twice: in wall time, and in this thread's CPU time
(`time.thread_time`), which on a shared machine is the trustworthy one with `--threads 1`
(time spent waiting for a core is not counted). Each decoder runs once as warm-up, then `--repeats` times interleaved with the
others (so that load on a shared machine hits them alike); the median repeat is reported. The
timing wrapper looks the device up once (its own cost is not the decoder's), and the objects the
setup leaves are frozen out of the cyclic GC (`gc.freeze`) so that a full collection they would
trigger at random does not land in one decoder's time.

The last column, "replayed", is the same decode with every forward answered from a recording
of the warm-up's outputs instead of the model (same tokens, checked): the decoder's own work
with warm caches. On this CPU each forward of the tiny model streams its 3.8 MB of weights
through a 512 KiB L2, so the code and data of the step that follows come back from L3 and the
step costs 1.6-2.8x its warm time (measured). On a GPU the forward runs on the device and the
host's caches stay warm: a GPU run pays the warm cost, less the ops' arithmetic (the device's),
plus kernel launches and the device time of the step's ops (`gpu.py` measures that).

The issue 14 target is <= 0.2 ms per step for every decoder on a 2-core CPU, one thread. Prints a
table and, last, one JSON line; `--check-tokens FILE` also writes every decoder's tokens (to
compare two versions of the code: identical files = outputs unchanged).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/overhead.py` from a checkout

from _timing import TimedModel  # noqa: E402

from dleval import decoders, models, prompts, tasks  # noqa: E402
from dleval.models.base import Counted  # noqa: E402
from dleval.resolve import decoder_config  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decoders", default=",".join(decoders.names()))
    parser.add_argument("--check-tokens", type=Path, default=None, help="write {decoder: [tokens...]} here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = tasks.load_task("synth_gsm")
    samples = tasks.load_samples(spec)[: args.problems]
    names = [decoders.canonical(n.strip()) for n in args.decoders.split(",") if n.strip()]
    setups: dict = {}
    for name in names:
        info = decoders.info(name)
        module = decoders.load(name)
        loaded = models.load(info.cpu_model, device="cpu")
        cfg = decoder_config(module, spec.generation, {}, name)
        ids = [prompts.render(s, spec.prompt, loaded.tokenizer).ids for s in samples]
        setups[name] = (module, cfg, loaded.model, ids)
    floor_model = models.load(decoders.info("llada").cpu_model, device="cpu")
    floor_cfg = decoder_config(decoders.load("llada"), spec.generation, {}, "llada")
    floor_ids = [prompts.render(s, spec.prompt, floor_model.tokenizer).ids for s in samples]
    setups[FLOOR] = (_Floor, floor_cfg, floor_model.model, floor_ids)
    names.append(FLOOR)

    # The setup (models, tokenizers) leaves many objects behind; freezing them keeps the cyclic
    # GC's full collections, which they would trigger at random, out of the timed decodes. Young
    # collections of the decoders' own objects still run and are counted.
    gc.collect()
    gc.freeze()

    def once(name: str, record: list | None = None) -> tuple[float, float, float, float, int, list]:
        module, cfg, model, ids = setups[name]
        recorder = None if record is None else _Recorder(model, record)
        timed = TimedModel(model if recorder is None else recorder)
        counted = Counted(timed)
        gc.collect()  # the previous decode's garbage is not this one's
        t0, c0 = time.perf_counter(), time.thread_time()
        gens = [module.decode(counted, [p], cfg)[0] for p in ids]
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if recorder is not None and not recorder.cached:  # no forward was given a cache: the K/V need not be kept
            record[:] = [type(out)(out.logits, None) for out in record]
        return wall, timed.seconds, cpu, timed.cpu_seconds, counted.nfe, [list(g.tokens) for g in gens]

    def replay(name: str) -> float:
        """Thread-CPU ms per step with the recorded forwards replayed (see the module docstring)."""
        module, cfg, model, ids = setups[name]
        timed = TimedModel(_Replay(model, recorded[name]))
        counted = Counted(timed)
        gc.collect()
        c0 = time.thread_time()
        gens = [module.decode(counted, [p], cfg)[0] for p in ids]
        cpu = time.thread_time() - c0
        assert [list(g.tokens) for g in gens] == tokens[name], f"{name}: the replayed decode differs"
        return 1000 * (cpu - timed.cpu_seconds) / counted.nfe

    recorded: dict[str, list] = {name: [] for name in names}
    tokens = {name: once(name, recorded[name])[-1] for name in names}  # warm-up, recording every forward's output
    runs: dict[str, list] = {name: [] for name in names}
    replays: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            *times, toks = once(name)
            assert toks == tokens[name], f"{name} is not deterministic"
            runs[name].append(times)
            replays[name].append(replay(name))
    rows = []
    for name in names:
        med = lambda f, name=name: 1000 * statistics.median(f(*r) for r in runs[name])  # noqa: E731
        row = dict(
            decoder=name,
            forwards=runs[name][0][4],
            forward_ms=med(lambda w, f, c, fc, n: f / n),
            overhead_ms=med(lambda w, f, c, fc, n: (w - f) / n),
            cpu_forward_ms=med(lambda w, f, c, fc, n: fc / n),
            cpu_overhead_ms=med(lambda w, f, c, fc, n: (c - fc) / n),
            replay_ms=statistics.median(replays[name]),
        )
        row["share"] = row["overhead_ms"] / row["forward_ms"]
        row["cpu_share"] = row["cpu_overhead_ms"] / row["cpu_forward_ms"]
        rows.append(row)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(samples)} synth_gsm problems, {args.threads} thread(s), {platform.processor() or platform.machine()}, load {load:.2f}")
    print(f"{'':<20}{'--------- wall ---------':>36}{'------ thread CPU time ------':>32}{'replayed':>12}")
    print(
        f"{'decoder':<17}{'forwards':>9}{'forward ms':>12}{'overhead ms':>12}{'share':>8}{'forward ms':>14}{'overhead ms':>12}{'share':>8}"
        f"{'overhead ms':>12}"
    )
    for r in rows:
        print(
            f"{r['decoder']:<17}{r['forwards']:>9}{r['forward_ms']:12.3f}{r['overhead_ms']:12.3f}{100 * r['share']:7.1f}%"
            f"{r['cpu_forward_ms']:14.3f}{r['cpu_overhead_ms']:12.3f}{100 * r['cpu_share']:7.1f}%{r['replay_ms']:12.3f}"
        )
    if args.check_tokens:
        args.check_tokens.write_text(json.dumps({n: t for n, t in tokens.items() if n != FLOOR}) + "\n")
    result = {"problems": len(samples), "threads": args.threads, "load": load, "rows": rows}
    print(json.dumps(result))
    return result


FLOOR = "(floor)"


class _Floor:
    """The `(floor)` row: a "decoder" that makes `gen_length` forwards of the prompt and its
    masks and does nothing with the logits (the harness's own cost per step)."""

    @staticmethod
    @torch.inference_mode()
    def decode(model, prompts, cfg):
        out = []
        for p in prompts:
            x = torch.tensor([list(p) + [model.mask_id] * cfg.gen_length])
            for _ in range(cfg.gen_length):
                model.forward(x)
            out.append(_NoTokens)
        return out


class _NoTokens:
    tokens: tuple = ()


class _Recorder:
    """Passes forwards through and keeps each output, its logits copied (decoders write into
    their logits), for `_Replay`; `once` drops the K/V of a decode that never passed a cache."""

    def __init__(self, model, outputs: list) -> None:
        self.inner, self.outputs = model, outputs
        self.cached = False  # some forward was given a cache (then the recorded K/V are kept)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, **kwargs):
        out = self.inner.forward(ids, **kwargs)
        self.cached = self.cached or kwargs.get("cache") is not None
        self.outputs.append(type(out)(out.logits.clone(), out.kv))
        return out


class _Replay:
    """Answers each forward with the next recorded output (a fresh copy of its logits) without
    running the model. The decoder's inputs are ignored: the decode repeats the recorded one
    step for step, which the caller checks by its tokens."""

    def __init__(self, model, outputs: list) -> None:
        self.inner, self.outputs, self.i = model, outputs, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, **kwargs):
        out = self.outputs[self.i]
        self.i += 1
        return type(out)(out.logits.clone(), out.kv)


if __name__ == "__main__":
    main()
