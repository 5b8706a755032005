"""Thread defaults on a crowded machine: one decode job alone vs the same job with J copies at once.

Run: python benchmarks/threads.py [--problems 10] [--jobs 5] [--settings torch,dleval,one]

Each job decodes the same `synth_gsm` problems with `llada` (gen 32, steps 32, batch 1) on the
bundled tiny model and reports its decode seconds. Settings, applied in each job's own process:
  torch   torch's own defaults: as many intra-op threads as cores, OMP_WAIT_POLICY unset
          (what a dleval command did before `dleval.launch.configure_threads`);
  dleval  `dleval.launch.configure_threads()`: usable cores / local ranks (at most 8) and
          OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS unset (the CLI's default now);
  one     OMP_NUM_THREADS=1, then `configure_threads()` (what CI and the gate use).
For each setting: the job alone, then J copies started together (the issue's "five jobs shared
the 2 cores"). Fair sharing of a CPU-bound job costs about J x (its CPU share alone); the
"crowded / alone" ratio far above that is thrashing. Settings run one after another in one
invocation, so the ratios are comparable; on a shared machine the absolute seconds are not.
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = ("torch", "dleval", "one")


def worker(setting: str, problems: int) -> None:
    if setting != "torch":
        from dleval import launch

        launch.configure_threads()
    import torch

    from dleval import models, prompts, tasks
    from dleval.decoders import llada
    from dleval.models.base import Counted

    loaded = models.load("tiny", device="cpu")
    spec = tasks.load_task("synth_gsm")
    ids = [prompts.render(s, spec.prompt, loaded.tokenizer).ids for s in tasks.load_samples(spec)[:problems]]
    counted = Counted(loaded.model)
    cfg = llada.Config(gen_length=32, block_length=32, steps=32)
    llada.decode(counted, [ids[0]], cfg)  # warm-up
    cpu0, t0 = time.process_time(), time.perf_counter()
    for p in ids:
        llada.decode(counted, [p], cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(
        json.dumps(
            {"seconds": seconds, "cpu_seconds": cpu, "threads": torch.get_num_threads(), "wait": os.environ.get("OMP_WAIT_POLICY", "")}
        )
    )


def launch_jobs(setting: str, jobs: int, problems: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    if setting == "one":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, __file__, "--worker", setting, "--problems", str(problems)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"a {setting} job failed (exit {p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.problems)
        return
    from dleval import launch

    load = os.getloadavg()[0]
    rows = {}
    for setting in args.settings.split(","):
        alone = launch_jobs(setting, 1, args.problems)[0]
        crowd = launch_jobs(setting, args.jobs, args.problems)
        mean = sum(j["seconds"] for j in crowd) / len(crowd)
        rows[setting] = {
            "threads": alone["threads"],
            "wait_policy": alone["wait"] or "(unset)",
            "alone_s": round(alone["seconds"], 2),
            "alone_cpu_s": round(alone["cpu_seconds"], 2),
            "crowded_mean_s": round(mean, 2),
            "crowded_max_s": round(max(j["seconds"] for j in crowd), 2),
            "crowded_cpu_s": round(sum(j["cpu_seconds"] for j in crowd) / len(crowd), 2),
            "slowdown": round(mean / alone["seconds"], 2),
        }
    print(f"{args.problems} synth_gsm problems, llada gen 32 / 32 steps, tiny model; {args.jobs} jobs at once; "
          f"{launch.usable_cores()} usable cores; load average at start {load:.1f}")  # fmt: skip
    print(f"{'setting':<8} {'threads':>7} {'wait':>8} {'alone s':>8} {'crowded s':>10} {'slowdown':>9} {'cpu s alone/crowded':>20}")
    for name, r in rows.items():
        print(
            f"{name:<8} {r['threads']:>7} {r['wait_policy']:>8} {r['alone_s']:>8.2f} {r['crowded_mean_s']:>10.2f} "
            f"{r['slowdown']:>8.2f}x {r['alone_cpu_s']:>9.2f}/{r['crowded_cpu_s']:.2f}"
        )
    print(
        json.dumps({"problems": args.problems, "jobs": args.jobs, "cores": launch.usable_cores(), "load_at_start": load, "settings": rows})
    )


if __name__ == "__main__":
    main()
