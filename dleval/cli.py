"""The `dleval` command: a thin argparse front end over run, list and train.

Bad input (unknown names, malformed values, missing files) prints one sentence and exits 2;
Ctrl-C during a run keeps every finished sample and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dleval.errors import UserError


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", required=True, help="decoder name (see `dleval list decoders`)")
    p.add_argument("--task", required=True, help="task name (see `dleval list tasks`)")
    p.add_argument("--model", help="registry name, local folder or hub id (default: tiny on CPU, the paper's checkpoint on CUDA)")
    p.add_argument("--limit", type=int, help="run only the first N samples")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together where the decoder allows (default 8)")
    p.add_argument("-D", dest="decoder_args", action="append", default=[], metavar="KEY=VALUE", help="decoder parameter (repeatable)")
    p.add_argument("-T", dest="task_args", action="append", default=[], metavar="KEY=VALUE", help="task parameter (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the newest run of the same configuration")
    p.add_argument("--out", type=Path, default=Path("results/runs"), help="where run folders go (default results/runs)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("DLEVAL_DATA_DIR"),
        help="local dataset folder (default $DLEVAL_DATA_DIR, else the hub)",
    )
    p.add_argument("--seed", type=int, default=1234, help="seed for sampling noise (default 1234, as LLaDA's eval)")
    p.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dleval", description="Benchmark parallel decoding of diffusion LLMs.")
    sub = top.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("run", help="evaluate one decoder on one task"))
    lst = sub.add_parser("list", help="list decoders, tasks or models")
    lst.add_argument("what", choices=["decoders", "tasks", "models"])
    train = sub.add_parser("train", help="training recipes")
    train.add_argument(
        "recipe", choices=["tiny", "filter"], help="tiny: build the bundled CPU model; filter: train --model's Learn2PD filter"
    )
    train.add_argument("--model", default="tiny", help="filter: the model to trace and train for (default tiny)")
    train.add_argument("--device", help="filter: torch device for tracing (default cuda if available, else cpu)")
    train.add_argument("--out", type=Path, help="output folder (default: tiny: the package's bundled folder; filter: the model's folder)")
    train.add_argument("-O", dest="train_args", action="append", default=[], metavar="KEY=VALUE", help="recipe option (repeatable)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "list":
            return _list(args.what)
        if args.command == "train":
            return _train(args)
    except UserError as exc:
        print(f"dleval: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    from dleval import options
    from dleval.run import Interrupted, RunRequest, run

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of samples")
    if args.batch_size <= 0:
        raise UserError("--batch-size must be positive")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UserError(f"data dir '{args.data_dir}' does not exist")
    req = RunRequest(
        decoder=args.decoder,
        task=args.task,
        model=args.model,
        limit=args.limit,
        batch_size=args.batch_size,
        decoder_args=options.parse_pairs(args.decoder_args, "-D"),
        task_args=options.parse_pairs(args.task_args, "-T"),
        resume=args.resume,
        out_dir=args.out,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
    )
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    try:
        result = run(req, log=log)
    except Interrupted as stop:
        print(format_summary(stop.result))
        print(
            f"interrupted: {len(stop.result.records)} finished samples are kept in {stop.result.run_dir}; rerun with --resume to continue",
            file=sys.stderr,
        )
        return 130
    print(format_summary(result))
    return 0


def format_summary(result) -> str:
    s = result.summary
    cfg = result.config
    primary = cfg["task"]["scoring"]["primary"]
    lines = [
        f"{cfg['task']['name']} · {cfg['decoder']['name']} · {cfg['model']['name']}   {s.n} samples{'' if result.complete else ' (incomplete)'}",
        f"  accuracy ({primary}){'':<8} {s.accuracy:6.2f} ± {s.accuracy_stderr:.2f} %",
    ]
    for name, value in s.filters.items():
        if name != primary:
            lines.append(f"  {name:<27} {value:6.2f} %")
    lines += [
        f"  mean NFE{'':<20} {s.nfe_mean:6.2f}   (min {s.nfe_min}, max {s.nfe_max})",
        f"  answer TPF{'':<18} {s.answer_tpf:6.2f}   (canvas TPF {s.canvas_tpf:.2f}, answer tokens {s.answer_tokens_mean:.1f})",
        f"  latency{'':<21} {s.latency_mean:6.3f} s/sample (p50 {s.latency_p50:.3f}, p90 {s.latency_p90:.3f}; {s.timed} timed)   TPS {s.tps:.1f}",
    ]
    if s.errors:
        lines.append(f"  errors{'':<22} {s.errors} samples (see 'error' in samples.jsonl)")
    lines.append(f"  results: {result.run_dir}")
    return "\n".join(lines)


def _list(what: str) -> int:
    if what == "decoders":
        from dleval import decoders

        for name in decoders.names():
            d = decoders.info(name)
            alias = f" (alias: {', '.join(d.aliases)})" if d.aliases else ""
            print(f"{name:<12} {d.summary}{alias}")
    elif what == "tasks":
        from dleval import tasks

        for name in tasks.list_tasks():
            print(f"{name:<22} {tasks.load_task(name).description}")
    else:
        from dleval.models import CHECKPOINTS, REGISTRY

        for name, entry in REGISTRY.items():
            where = "bundled" if entry.bundled else entry.source
            if entry.bundled and not (CHECKPOINTS / entry.source / "config.json").is_file():
                where = "bundled, not built yet"
            print(f"{name:<20} {entry.description}  [{where}]")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dleval import options
    from dleval.models import CHECKPOINTS
    from dleval.train import tiny

    if args.recipe == "filter":
        from dleval.train import filter as learn2pd_filter

        cfg = options.build(learn2pd_filter.FilterConfig, options.parse_pairs(args.train_args, "-O"), "recipe 'filter'")
        meta = learn2pd_filter.train(args.model, cfg, args.out, log=lambda m: print(m, file=sys.stderr), device=args.device)
        test = meta["metrics"].get("test", {})
        print(
            f"trained the Learn2PD filter on {meta['oracle_steps']} oracle steps in {meta['train_seconds']:.0f} s "
            f"(test loss {test.get('loss', float('nan')):.4f}, precision {test.get('precision', float('nan')):.3f}) -> {meta['path']}"
        )
        return 0
    cfg = options.build(tiny.TinyConfig, options.parse_pairs(args.train_args, "-O"), "recipe 'tiny'")
    out = args.out or CHECKPOINTS / "tiny"
    meta = tiny.train(cfg, out, log=lambda m: print(m, file=sys.stderr))
    print(f"trained {meta['parameters']:,} parameters in {meta['train_seconds']:.0f} s -> {out}")
    return 0
