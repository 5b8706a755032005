"""A run, wired: task -> prompt -> decode(model) -> score -> Record, appended as each sample finishes.

`run(request)` is the one place the stages meet. It resolves the decoder config, the task (spec
<- -T) and the model (`dleval.resolve`), renders the prompts, opens the run folder
(`dleval.identity` names it; `dleval.results` defines its format), hands this rank's samples to
the batch loop (`dleval.loop`: decode, time, score) and merges. The folder holds `config.json`
once (all that is needed to reproduce the run, including the sample ids), one Record per sample
appended to this process's shard (flushed per sample, so Ctrl-C, SIGTERM, kill -9 or a crash
loses nothing finished), then the merge into `samples.jsonl` + `summary.json`.

A run folder is one configuration and one sample set: `--resume` continues the newest folder of
the same config hash *and* sample set; a different `--limit` or data starts a new folder, so no
command touches another run's files.

Data parallel (ARCHITECTURE §7): under torchrun / accelerate / srun each rank (dleval.ranks)
takes pending ids `i % world_size == rank`, where pending = the samples minus those finished in
any shard by an earlier invocation (so every rank computes the same list, however late it
starts), writes its own shard and a done flag; rank 0 merges once every flag is there (or after
`merge_timeout`, or when stopped). No collective is used; a launcher's process group
is left alone.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dleval import decoders, models, options, prompts, results, tasks
from dleval.errors import UserError
from dleval.identity import device_name, digest, environment, find_resumable, slug
from dleval.loop import Pipeline, run_samples
from dleval.metrics import Summary, summarize
from dleval.models.compiled import Compiled
from dleval.ranks import Ranks, detect
from dleval.resolve import TOO_LONG, choose_model, decoder_config, length_check, max_positions, settings
from dleval.types import Record, Sample

FORMAT_VERSION = results.FORMAT_VERSION


@dataclass(frozen=True)
class RunRequest:
    """One `dleval run`. `ranks` (None: read from the environment) carries this process's rank
    and the invocation id that every rank and every point of a sweep share."""

    decoder: str
    task: str
    model: str | None = None
    model_family: str = "llada"  # without `model`: whose paper checkpoint / bundled model (decoders.info)
    limit: int | None = None
    batch_size: int = 1
    decoder_args: dict[str, Any] = field(default_factory=dict)
    task_args: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    out_dir: Path = Path("results/runs")
    data_dir: Path | None = None
    seed: int = 1234
    device: str | None = None
    progress: bool = True
    ranks: Ranks | None = None
    too_long: str = "error"
    longest_first: bool = False  # deal pending samples longest prompt first (a rank's batches stay even)
    merge_timeout: float = 3600.0  # seconds rank 0 waits for the other ranks' done flags before merging alone
    timing_rerun_of: str = ""  # run id this run re-times (dleval sweep --retime-baseline); recorded in config.json
    compile: bool = False  # torch.compile the model forward (same tokens; pays only on long runs)


@dataclass
class RunResult:
    run_dir: Path
    summary: Summary
    records: list[Record]
    config: dict[str, Any]
    complete: bool
    merged: bool = True  # samples.jsonl/summary.json cover every shard (False: a rank that left the merge to another)
    devices: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # decoder field -> where its value came from, when not the paper's


class Interrupted(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__("interrupted")
        self.result = result


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what schedulers send) stops the run like Ctrl-C: finished samples kept, summary written."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Setup:
    """What a request resolves to before any file is touched: the stages, ready to wire."""

    info: decoders.DecoderInfo
    decoder: Any  # the decoder module
    cfg: Any  # its frozen Config
    sources: dict[str, str]  # decoder field -> where its value came from, when not the paper's
    spec: tasks.TaskSpec
    samples: list[Sample]
    loaded: models.Loaded
    ckpt: models.CheckpointSettings
    counted: models.Counted
    batch_size: int
    rendered: dict[str, prompts.Rendered]
    too_long: set[str]  # sample ids recorded as errors (--too-long record)


def run(req: RunRequest, log: Callable[[str], None] = print) -> RunResult:
    where = req.ranks or detect()
    setup = _setup(req, where, log)
    run_dir, config, env = _open_folder(req, where, setup, log)
    before = results.read_run(run_dir, config["config_hash"])
    for note in before.notes:
        log(f"note: {note}")
    samples, rendered = setup.samples, setup.rendered
    finished = {r.sample_id for r in before.records}
    earlier = {r.sample_id for r in before.records if r.invocation != where.invocation}
    common = [s for s in samples if s.id not in earlier]  # the same list on every rank, however late it starts
    if req.longest_first:
        common.sort(key=lambda s: -len(rendered[s.id].ids))
    mine = [s for i, s in enumerate(common) if i % where.world_size == where.rank and s.id not in finished]
    if finished:
        log(f"resuming {run_dir}: {len(finished)} of {len(samples)} samples already finished")
    # Nothing left: no file is touched. Under a launcher "left" is judged on what earlier
    # invocations finished (the same answer on every rank, however late it starts).
    if not common if where.sharded else not mine:
        result = _finish(run_dir, config, where, dataclasses.replace(req, merge_timeout=0), True, log)
        result.sources = dict(config.get("decoder_sources", {}))
        return result
    with (run_dir / "invocations.jsonl").open("a") as fh:  # one short O_APPEND line per rank and invocation
        fh.write(
            json.dumps(
                {
                    "invocation": where.invocation, "rank": where.rank, "world_size": where.world_size, "command": sys.argv,
                    "started": datetime.now(UTC).isoformat(timespec="seconds"), "batch_size": setup.batch_size, "environment": env,
                    "conditions": results.conditions(torch.get_num_threads()),
                }
            )
            + "\n"
        )  # fmt: skip

    if where.sharded:
        log(f"{where.describe()}: {len(mine)} of {len(common)} pending samples")
    counted = setup.counted
    pipe = Pipeline(
        decoder=setup.decoder, cfg=setup.cfg, model=counted, tokenizer=setup.loaded.tokenizer, spec=setup.spec, rendered=rendered,
        config_hash=config["config_hash"], seed=req.seed,
        eos_ids=frozenset({counted.eos_id} | ({counted.eot_id} if counted.eot_id is not None else set())),
        ranks=where, device=device_name(setup.loaded.model.device), too_long=frozenset(setup.too_long),
        takes_seeds="seeds" in inspect.signature(setup.decoder.decode).parameters,
    )  # fmt: skip
    (run_dir / results.done_name(where.rank, where.world_size)).unlink(missing_ok=True)  # a stale flag of an earlier launch
    interrupted = False
    written: list[Record] = []
    with _sigterm_as_interrupt():
        try:
            with results.ShardWriter(run_dir, where.rank, where.world_size) as shard:
                for note in shard.notes:
                    log(f"note: {note}")
                run_samples(
                    pipe,
                    mine,
                    setup.batch_size,
                    shard.write,
                    written,
                    label=f"{setup.spec.name} · {setup.info.name}",
                    progress=req.progress and where.rank == 0,
                )
        except KeyboardInterrupt:
            interrupted = True
        if not interrupted:
            results.write_done(
                run_dir, where.rank, where.world_size,
                {"invocation": where.invocation, "records": len(written), "device": pipe.device,
                 "finished": datetime.now(UTC).isoformat(timespec="seconds")},
            )  # fmt: skip
        result = _finish(run_dir, config, where, req, interrupted, log)
    result.sources = dict(config.get("decoder_sources", {}))
    if interrupted:
        raise Interrupted(result)
    return result


def _setup(req: RunRequest, where: Ranks, log: Callable[[str], None]) -> Setup:
    """Task, samples, model, decoder config and rendered prompts; every bad input fails here,
    before a run folder exists (a bad -D even before the model loads)."""
    info = decoders.info(req.decoder, req.model_family)
    decoder = decoders.load(info.name)
    spec = tasks.load_task(req.task, req.task_args)
    if req.too_long not in TOO_LONG:
        raise UserError(f"--too-long must be one of {', '.join(TOO_LONG)}, not '{req.too_long}'")
    decoder_config(decoder, spec.generation, req.decoder_args, info.name)  # a bad -D fails before a model loads
    samples = tasks.load_samples(spec, req.data_dir)
    if req.limit is not None:
        samples = samples[: req.limit]
    if not samples:
        raise UserError(f"task '{spec.name}' has no samples to run")
    device = req.device
    if device is None and where.launcher and torch.cuda.is_available():
        device = f"cuda:{where.local_rank % torch.cuda.device_count()}"  # one GPU per local rank
        torch.cuda.set_device(torch.device(device))
    loaded = models.load(choose_model(req.model, info, log), device=device)
    ckpt = models.checkpoint_settings(loaded.folder)
    merged_settings, sources = settings(decoder, spec.generation, req.decoder_args, ckpt.decoders.get(info.name, {}))
    cfg = options.build(decoder.Config, merged_settings, f"decoder '{info.name}'")
    if ckpt.trained_for and spec.name not in ckpt.trained_for:
        log(
            f"note: model '{loaded.name}' was trained only for {', '.join(ckpt.trained_for)}; on '{spec.name}' expect near-zero "
            "accuracy and long prompts (pass --model with a real checkpoint, e.g. GSAI-ML/LLaDA-8B-Instruct)"
        )
    counted = models.Counted(Compiled(loaded.model) if req.compile else loaded.model)
    check = getattr(decoder, "check", None)
    if check is not None:  # a setting this model cannot run (e.g. no trained filter): say so once, not per sample
        try:
            check(counted, cfg)
        except ValueError as exc:
            raise UserError(f"decoder '{info.name}': {exc}") from None
    batch_size = req.batch_size
    if batch_size > 1 and not info.batched:
        log(f"decoder '{info.name}' decodes one prompt at a time; running with batch size 1")
        batch_size = 1
    rendered = {s.id: prompts.render(s, spec.prompt, loaded.tokenizer) for s in samples}
    too_long = length_check(
        samples, rendered, getattr(cfg, "gen_length", None), max_positions(loaded.model), loaded.name, req.too_long, log
    )
    return Setup(info, decoder, cfg, sources, spec, samples, loaded, ckpt, counted, batch_size, rendered, too_long)


def _open_folder(req: RunRequest, where: Ranks, setup: Setup, log: Callable[[str], None]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(run folder, its config.json, this process's environment): the folder --resume continues,
    else a new one; config.json is written once, by the first writer."""
    info, cfg, spec, loaded, samples, ckpt = setup.info, setup.cfg, setup.spec, setup.loaded, setup.samples, setup.ckpt
    identity = {
        "decoder": {"name": info.name, "config": dataclasses.asdict(cfg)},
        "task": spec.to_dict(),
        "model": {"name": loaded.name, "fingerprint": loaded.fingerprint, "dtype": loaded.dtype},
        "prompt": {"style": spec.prompt.style, "template_hash": prompts.template_hash(spec.prompt, loaded.tokenizer)},
        "seed": req.seed,
    }
    config_hash = digest(identity)[:12]
    sample_set = digest([(s.id, s.question, s.target) for s in samples])[:16]
    suffix = f"{spec.name}_{info.name}_{Path(loaded.name).name.replace('/', '_')}_{config_hash}"
    run_dir, others = find_resumable(req.out_dir, suffix, sample_set) if req.resume else (None, [])
    if req.resume and run_dir is None:
        if others:
            log(f"{others[-1].name} ran this configuration on another sample set: starting a new run folder for these {len(samples)}")
        else:
            log("no earlier run with this configuration: starting a new one")
    if run_dir is None and where.named:  # every rank of one launch names the same folder
        run_dir = req.out_dir / f"{slug(where.invocation)}_{suffix}"
    elif run_dir is None:
        run_dir = _new_folder(req.out_dir, datetime.now().strftime("%Y%m%d-%H%M%S"), suffix)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = environment(loaded.model.device)
    config = {
        "format_version": FORMAT_VERSION,
        "run_id": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "command": sys.argv,
        "config_hash": config_hash,
        **identity,
        "decoder_sources": {k: v for k, v in setup.sources.items() if k in options.field_names(setup.decoder.Config)},
        "checkpoint_settings": {"file": str(ckpt.path) if ckpt.path else None, "decoder": ckpt.decoders.get(info.name, {})},
        "model_folder": str(loaded.folder),
        "batch_size": setup.batch_size,
        "compile": req.compile,
        "limit": req.limit,
        "data_dir": str(req.data_dir) if req.data_dir else None,
        "dataset_hash": sample_set,
        "sample_ids": [s.id for s in samples],
        "invocation": where.invocation,
        "world_size": where.world_size,
        "timing_rerun_of": req.timing_rerun_of or None,
        "environment": env,
        "conditions": results.conditions(torch.get_num_threads()),
    }
    if not results.write_json_once(run_dir / results.CONFIG, config):
        config = results.read_config(run_dir)  # the first writer's, never rewritten
        if config.get("config_hash") != config_hash:
            raise UserError(f"{run_dir} holds another configuration (config hash {config.get('config_hash')}, not {config_hash})")
        if config.get("dataset_hash") != sample_set:
            raise UserError(
                f"{run_dir} holds another sample set (dataset hash {config.get('dataset_hash')}, not {sample_set}): give this run its own --run-id"
            )
    return run_dir, config, env


def _new_folder(out_dir: Path, stamp: str, suffix: str) -> Path:
    """A run folder that no other run has: two runs of one configuration started in the same
    second (a sweep point beside a run, two shells) would otherwise share `<stamp>_<suffix>`, and
    the second would append to the first's finished files. mkdir is the atomic claim."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        path = out_dir / (f"{stamp}_{suffix}" if n == 1 else f"{stamp}-{n}_{suffix}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def _finish(run_dir: Path, config: dict[str, Any], where: Ranks, req: RunRequest, interrupted: bool, log) -> RunResult:
    """Rank 0 (the only process of an unsharded run) merges: after every rank's done flag of
    this invocation, after `merge_timeout`, or at once when interrupted (a summary always covers
    exactly the Records present). One merger per launch, so no rank ever reads a folder that
    another is rewriting; if rank 0 dies, `dleval merge` or a resume merges."""
    world = where.world_size
    if where.rank == 0:
        deadline = time.monotonic() + (0 if interrupted else req.merge_timeout)
        try:
            while world > 1 and len(results.done_ranks(run_dir, world, where.invocation)) < world and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:  # stopped while waiting for the others: merge what is there now
            interrupted = True
        waiting = sorted(set(range(world)) - results.done_ranks(run_dir, world, where.invocation))
        if waiting and not interrupted:
            log(f"rank(s) {', '.join(map(str, waiting))} not done after {req.merge_timeout:.0f} s: merging what is there; "
                f"run `dleval merge {run_dir}` when they finish")  # fmt: skip
        merged = results.merge(run_dir, end_conditions=results.conditions(torch.get_num_threads()))
        for note in merged.notes:
            log(f"note: {note}")
        records, complete = merged.records, merged.complete
    else:
        records = results.read_run(run_dir, config.get("config_hash")).records
        complete = not set(config.get("sample_ids", ())) - {r.sample_id for r in records}
    return RunResult(run_dir, summarize(records), records, config, complete, where.rank == 0, results.devices(records))
