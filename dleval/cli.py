"""The `dleval` command: a thin argparse front end over run, sweep, report, check, validate, list and train.

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
    p.add_argument(
        "--model-family",
        choices=["llada", "dream"],
        default="llada",
        help="without --model: the family whose checkpoint the decoder's paper used (dream: tiny-dream on CPU; default llada)",
    )
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
    p.add_argument("--compile", action="store_true", help="torch.compile the model forward (same tokens; minutes of compilation up front)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--too-long",
        choices=["error", "record"],
        default="error",
        help="prompts + canvas longer than the model's positions: refuse the run (default) or record them as errors",
    )
    p.add_argument("--run-id", help="invocation id shared by every rank (default: the launcher's, e.g. TORCHELASTIC_RUN_ID, SLURM_JOB_ID)")
    p.add_argument("--longest-first", action="store_true", help="deal pending samples to ranks longest prompt first")
    p.add_argument(
        "--merge-timeout", type=float, default=3600.0, help="seconds rank 0 waits for the other ranks before merging (default 3600)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: $OMP_NUM_THREADS, else the usable cores / ranks on this node, at most 8)",
    )


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dleval", description="Benchmark parallel decoding of diffusion LLMs.")
    sub = top.add_subparsers(dest="command", required=True)
    _add_run_args(sub.add_parser("run", help="evaluate one decoder on one task"))
    sweep = sub.add_parser("sweep", help="run a grid of decoder settings (comma lists in -D) plus the baseline point")
    _add_run_args(sweep)
    sweep.add_argument("--sweeps-out", type=Path, default=Path("results/sweeps"), help="where sweep records go (default results/sweeps)")
    sweep.add_argument("--no-baseline", action="store_true", help="do not add the llada one-token-per-step point")
    sweep.add_argument("--fresh", action="store_true", help="start new runs instead of resuming runs of the same configuration")
    sweep.add_argument(
        "--retime-baseline",
        action="store_true",
        help="re-time the baseline point in this invocation (a new run under <--out>/timing/) so speedups are side by side",
    )
    rep = sub.add_parser("report", help="leaderboard.csv, board.csv and report.html from run or sweep folders")
    rep.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP_DIR", help="run folders, sweep folders, or folders of them")
    rep.add_argument("--out", type=Path, default=Path("results/report"), help="output folder (default results/report)")
    rep.add_argument("--tasks", help="comma list of tasks the mean AUP is over (default: every task in the report)")
    rep.add_argument(
        "--y-max", action="append", default=[], metavar="TASK=ACC", help="pin a task's y_max (accuracy %%) instead of the pool's best"
    )
    rep.add_argument("--baseline", action="append", default=[], metavar="RUN", help="run id or folder that speedups divide by (per task)")
    rep.add_argument("--strict-aup", action="store_true", help="fail like d3LLM's reference when a curve falls more than 5 points")
    rep.add_argument("--title", default="dleval report", help="page title")
    chk = sub.add_parser("check", help="CI regression gate: rerun pinned sweeps and compare with a reference file")
    chk.add_argument("--reference", type=Path, required=True, help="reference file, e.g. results/reference/tiny_synth_gsm.json")
    chk.add_argument("--update", action="store_true", help="regenerate the reference from this run (on purpose) instead of comparing")
    chk.add_argument("--keep", type=Path, help="keep the gate's runs in this folder (default: a temporary folder)")
    chk.add_argument("--report", type=Path, help="also write the report of the gate's runs into this folder")
    chk.add_argument("--threads", type=int, default=1, help="torch threads for the gate's runs (default 1, the pinned setting)")
    chk.add_argument("--progress", action="store_true", help="show progress bars")
    chk.add_argument("--run-id", help="invocation id shared by every rank under a launcher (default: the launcher's)")
    val = sub.add_parser("validate", help="score a task's reference answers with its own scorer (exit 1 unless all pass)")
    val.add_argument("--task", required=True, help="task name (see `dleval list tasks`)")
    val.add_argument("-T", dest="task_args", action="append", default=[], metavar="KEY=VALUE", help="task parameter (repeatable)")
    val.add_argument("--limit", type=int, help="only the first N samples")
    val.add_argument("--workers", type=int, help="programs run at once (default: one per CPU)")
    val.add_argument(
        "--data-dir",
        type=Path,
        default=os.environ.get("DLEVAL_DATA_DIR"),
        help="local dataset folder (default $DLEVAL_DATA_DIR, else the hub)",
    )
    mrg = sub.add_parser("merge", help="join a run folder's shards into samples.jsonl + summary.json (exit 1 if samples are missing)")
    mrg.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (config.json + samples.rank-*.jsonl shards)")
    lst = sub.add_parser("list", help="list decoders, tasks or models")
    lst.add_argument("what", choices=["decoders", "tasks", "models"])
    train = sub.add_parser("train", help="training recipes")
    train.add_argument(
        "recipe",
        choices=["tiny", "distill", "filter"],
        help="tiny: build the bundled CPU model; distill: dParallel/d3LLM students; filter: train --model's Learn2PD filter",
    )
    train.add_argument(
        "--out", type=Path, help="output folder (default: tiny/distill: the package's bundled folder; filter: the model's folder)"
    )
    train.add_argument(
        "--arch",
        choices=["llada", "dream"],
        default="llada",
        help="tiny: the architecture to train (dream: tiny-dream; default llada: tiny)",
    )
    train.add_argument("--method", choices=["dparallel", "d3llm"], default="dparallel", help="distill: which recipe (default dparallel)")
    train.add_argument("--teacher", default="tiny", help="distill: teacher model (default tiny)")
    train.add_argument("--model", default="tiny", help="filter: the model to trace and train for (default tiny)")
    train.add_argument("--device", help="filter: torch device for tracing (default cuda if available, else cpu)")
    train.add_argument("-O", dest="train_args", action="append", default=[], metavar="KEY=VALUE", help="recipe option (repeatable)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in ("run", "sweep", "check"):
            from dleval import launch

            launch.configure_threads(args.threads)  # once, before torch loads (see dleval.launch)
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            return _report(args)
        if args.command == "check":
            return _check(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "list":
            return _list(args.what)
        if args.command == "train":
            return _train(args)
    except UserError as exc:
        print(f"dleval: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk, a folder removed mid-run; finished samples are already on disk
        where = f": {exc.filename}" if exc.filename else ""
        print(f"dleval: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    return 0


def _check_run_args(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of samples")
    if args.batch_size <= 0:
        raise UserError("--batch-size must be positive")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UserError(f"data dir '{args.data_dir}' does not exist")
    if args.merge_timeout < 0:
        raise UserError("--merge-timeout must be a number of seconds >= 0")


def _ranks(args: argparse.Namespace):
    from dleval.ranks import detect

    return detect(run_id=args.run_id)


def _run(args: argparse.Namespace) -> int:
    from dleval import options
    from dleval.run import Interrupted, RunRequest, run

    _check_run_args(args)
    req = RunRequest(
        decoder=args.decoder,
        task=args.task,
        model=args.model,
        model_family=args.model_family,
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
        compile=args.compile,
        ranks=_ranks(args),
        too_long=args.too_long,
        longest_first=args.longest_first,
        merge_timeout=args.merge_timeout,
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
    if not result.merged:  # a rank other than 0: its shard is written, rank 0 merges and prints the summary
        print(f"{req.ranks.describe()}: done; rank 0 merges {result.run_dir}", file=sys.stderr)
        return 0
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
    if cfg["decoder"].get("config", {}).get("skip_idle_forward"):
        lines.append("  NFE counting                 skip_idle_forward=True: the reference's idle cached forwards are not made")
    for name, value in s.filters.items():
        if name != primary:
            lines.append(f"  {name:<27} {value:6.2f} %")
    lines += [
        f"  mean NFE{'':<20} {s.nfe_mean:6.2f}   (min {s.nfe_min}, max {s.nfe_max})",
        f"  answer TPF{'':<18} {s.answer_tpf:6.2f}   (canvas TPF {s.canvas_tpf:.2f}, answer tokens {s.answer_tokens_mean:.1f})",
    ]
    devices = getattr(result, "devices", None) or []
    if len(devices) <= 1:
        where = f"   on {devices[0]['device']} x{devices[0]['processes']}" if devices and devices[0]["processes"] > 1 else ""
        lines.append(
            f"  latency{'':<21} {s.latency_mean:6.3f} s/sample (p50 {s.latency_p50:.3f}, p90 {s.latency_p90:.3f}; {s.timed} timed)"
            f"   TPS {s.tps:.1f}{where}"
        )
    else:  # seconds measured on different devices are never averaged together
        for d in devices:
            lines.append(
                f"  latency on {d['device']:<17} {d['latency_mean']:6.3f} s/sample (p50 {d['latency_p50']:.3f}; {d['timed']} timed, "
                f"{d['processes']} processes)   TPS {d['tps']:.1f}"
            )
    from_ckpt = {k: cfg["decoder"]["config"].get(k) for k, v in (getattr(result, "sources", None) or {}).items() if v == "checkpoint"}
    if from_ckpt:
        shown = ", ".join(f"{k}={v}" for k, v in from_ckpt.items())
        lines.append(f"  from the checkpoint{'':<9} {shown}   ({cfg['model']['name']}'s dleval.json; -D overrides)")
    if s.errors:
        lines.append(f"  errors{'':<22} {s.errors} samples (see 'error' in samples.jsonl)")
    lines.append(f"  results: {result.run_dir}")
    return "\n".join(lines)


def _merge(args: argparse.Namespace) -> int:
    from dleval import results

    if not results.is_run_dir(args.run_dir):
        raise UserError(f"'{args.run_dir}' is not a run folder (it needs config.json and samples.rank-*.jsonl or samples.jsonl)")
    merged = results.merge(args.run_dir)
    for note in merged.notes:
        print(f"note: {note}", file=sys.stderr)
    done = "wrote" if merged.written else "unchanged:"
    print(f"{done} {args.run_dir / results.SAMPLES} and {results.SUMMARY}: {len(merged.records)} of {merged.planned} samples"
          + (f", {merged.duplicates} duplicate(s) dropped" if merged.duplicates else ""))  # fmt: skip
    if merged.missing:
        print(f"dleval: error: {results.missing_sentence(merged)}; rerun the run with --resume to finish them", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from dleval import executor, options, tasks

    if args.limit is not None and args.limit <= 0:
        raise UserError("--limit must be a positive number of samples")
    if args.workers is not None and args.workers <= 0:
        raise UserError("--workers must be positive")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UserError(f"data dir '{args.data_dir}' does not exist")
    spec = tasks.load_task(args.task, options.parse_pairs(args.task_args, "-T"))
    samples = tasks.load_samples(spec, Path(args.data_dir) if args.data_dir else None)[: args.limit]
    if not samples:
        raise UserError(f"task '{spec.name}' has no samples to validate")
    v = tasks.validate(spec, samples, args.workers)
    print(format_validation(v, spec))
    if spec.scoring.scorer == "code":
        print(f"  sandbox: {executor.isolation().describe()}")
    return 0 if v.ok else 1


def format_validation(v, spec) -> str:
    timeouts = f", timeout {spec.scoring.timeout:g} s" + (
        f" ({', '.join(spec.scoring.timeout_overrides)})" if spec.scoring.timeout_overrides else ""
    )
    code = spec.scoring.scorer == "code"
    lines = [
        f"{v.task}: {v.passed[v.primary]}/{v.n} reference answers pass ({v.primary})   {v.seconds:.1f} s"
        + (f", {v.workers} workers{timeouts}" if code else "")
    ]
    lines += [f"  {name:<18} {count}/{v.n}" for name, count in v.passed.items() if name != v.primary]
    for sample_id, why in v.failures[:10]:
        lines.append(f"  FAIL {sample_id}: {why}")
    if len(v.failures) > 10:
        lines.append(f"  ... and {len(v.failures) - 10} more")
    return "\n".join(lines)


def _list(what: str) -> int:
    if what == "decoders":
        import dataclasses
        import textwrap

        from dleval import decoders

        width = max(len(n) for n in decoders.names())
        for name in decoders.names():
            d = decoders.info(name)
            alias = f" (alias: {', '.join(d.aliases)})" if d.aliases else ""
            print(f"{name:<{width}}  {d.summary}{alias}")
            defaults = [f"{f.name}={f.default if f.default != '' else repr('')}" for f in dataclasses.fields(decoders.load(name).Config)]
            text = f"defaults: {' '.join(defaults)}"
            indent, more = " " * (width + 2), " " * (width + 12)
            print(textwrap.fill(text, width=110, initial_indent=indent, subsequent_indent=more, break_on_hyphens=False))
            print(f"{'':{width + 2}}models:   {d.paper_model} (paper), {d.cpu_model} (without CUDA)")
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

    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    overrides = options.parse_pairs(args.train_args, "-O")
    if args.recipe == "tiny":
        from dleval.train import tiny

        cfg = options.build(tiny.TinyConfig, {"arch": args.arch, **overrides}, "recipe 'tiny'")
        out = args.out or CHECKPOINTS / ("tiny-dream" if cfg.arch == "dream" else "tiny")
        meta = tiny.train(cfg, out, log=log)
        print(f"trained {meta['parameters']:,} parameters in {meta['train_seconds']:.0f} s -> {out}")
        return 0
    if args.recipe == "filter":
        from dleval.train import filter as learn2pd_filter

        cfg = options.build(learn2pd_filter.FilterConfig, overrides, "recipe 'filter'")
        meta = learn2pd_filter.train(args.model, cfg, args.out, log=log, device=args.device)
        test = meta["metrics"].get("test", {})
        print(
            f"trained the Learn2PD filter on {meta['oracle_steps']} oracle steps in {meta['train_seconds']:.0f} s "
            f"(test loss {test.get('loss', float('nan')):.4f}, precision {test.get('precision', float('nan')):.3f}) -> {meta['path']}"
        )
        return 0
    from dleval import models
    from dleval.train import distill

    cfg = options.build(distill.DistillConfig, {**overrides, "method": args.method}, f"recipe 'distill --method {args.method}'")
    teacher = models.load(args.teacher, device="cpu")
    out = args.out or CHECKPOINTS / f"tiny-{args.method}"
    meta = distill.train(teacher, cfg, out, log=log)
    print(f"distilled {args.method} student of {teacher.name} in {meta['total_seconds']:.0f} s -> {out}")
    return 0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _sweep(args: argparse.Namespace) -> int:
    from dleval import options
    from dleval.run import Interrupted
    from dleval.sweep import SweepRequest, format_sweep, run_sweep, split_axes

    _check_run_args(args)
    req = SweepRequest(
        decoder=args.decoder,
        task=args.task,
        axes=split_axes(args.decoder, options.parse_pairs(args.decoder_args, "-D")),
        model=args.model,
        model_family=args.model_family,
        limit=args.limit,
        batch_size=args.batch_size,
        task_args=options.parse_pairs(args.task_args, "-T"),
        runs_dir=args.out,
        sweeps_dir=args.sweeps_out,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        compile=args.compile,
        baseline=not args.no_baseline,
        retime_baseline=args.retime_baseline,
        resume=not args.fresh,
        ranks=_ranks(args),
        too_long=args.too_long,
        longest_first=args.longest_first,
        merge_timeout=args.merge_timeout,
    )
    try:
        result = run_sweep(req, log=_log)
    except Interrupted as stop:
        print(f"interrupted: finished samples are kept ({stop.result.run_dir}); rerun the same command to continue", file=sys.stderr)
        return 130
    if req.ranks is not None and req.ranks.rank != 0:
        return 0  # rank 0 prints the merged sweep
    print(format_sweep(result))
    return 0


def _report(args: argparse.Namespace) -> int:
    from dleval import report

    y_max = {}
    for item in args.y_max:
        task, sep, value = item.partition("=")
        try:
            y_max[task.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not task.strip():
            raise UserError(f"--y-max expects TASK=ACCURACY in percent, got '{item}'")
    mean_tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    built = report.build(args.paths, mean_tasks=mean_tasks, y_max=y_max, baselines=args.baseline, strict=args.strict_aup)
    paths = report.write(built, args.out, title=args.title)
    for note in built.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{len(built.rows)} rows, {len(built.board)} board entries, tasks: {', '.join(built.tasks)}")
    for e in built.board:
        cells = "  ".join(f"{t} {e.cells[t].aup:.1f}" for t in built.tasks if t in e.cells)
        mean = "–" if e.mean_aup is None else f"{e.mean_aup:.1f}"
        missing = f"   missing: {', '.join(e.missing)} (not ranked)" if e.missing else ""
        print(f"  {e.rank or '–':>2}  {e.model} · {e.decoder:<16} mean AUP {mean:>7}   {cells}{missing}")
    for p in paths:
        print(f"wrote {p}")
    return 0


def _check(args: argparse.Namespace) -> int:
    import json

    from dleval import report
    from dleval.gate import check, format_check, load_reference

    ref = load_reference(args.reference)
    work_dir = args.keep or (args.report / "runs" if args.report is not None else None)
    if args.threads <= 0:
        raise UserError("--threads must be positive")
    where = _ranks(args)
    result, new = check(ref, update=args.update, work_dir=work_dir, threads=args.threads, progress=args.progress, log=_log, ranks=where)
    if where.rank != 0:
        return 0  # every rank ran its shard of every point; rank 0 merged them and compares
    if new is not None:
        args.reference.write_text(json.dumps(new, indent=2) + "\n")
        print(
            f"updated {args.reference}: {len(new['sweeps'])} decoders, y_max {new['y_max']:.2f}; "
            f"the gate ran in {result.seconds:.0f} s ({result.cpu_seconds:.0f} s of CPU)"
        )
    else:
        print(format_check(result))
    if args.report is not None:
        built = report.build(result.sweep_dirs, y_max={ref.task: result.y_max}, alpha=ref.alpha)
        for path in report.write(built, args.report, title=f"dleval check: {args.reference.name}"):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if new is not None or result.ok else 1
