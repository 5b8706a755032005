"""THE loop: task -> prompt -> decode(model) -> score -> Record, appended as each sample finishes.

`run(request)` resolves the decoder config (paper defaults <- the checkpoint's `dleval.json` <-
the task's generation hints <- -D), the task (spec <- -T), and the model (--model, else the
bundled tiny model without CUDA, else the checkpoint the decoder's paper used), and writes a run
folder in the format `dleval.results` defines: `config.json` once (all that is needed to
reproduce the run, including the sample ids), one Record per sample appended to this process's
shard (flushed per sample, so Ctrl-C, SIGTERM, kill -9 or a crash loses nothing finished), then
the merge into `samples.jsonl` + `summary.json`.

A run folder is one configuration and one sample set: `--resume` continues the newest folder of
the same config hash *and* sample set; a different `--limit` or data starts a new folder, so no
command touches another run's files.

Data parallel (ARCHITECTURE §7): under torchrun / accelerate / srun each rank (dleval.ranks)
takes pending ids `i % world_size == rank`, where pending = the samples minus those finished in
any shard by an earlier invocation (so every rank computes the same list, however late it
starts), writes its own shard and a done flag; rank 0 merges once every flag is there (or after
`merge_timeout`, or when stopped). No collective is used; a launcher's process group
is left alone. Timing is done here only: device sync around each decode, each rank's first
batch flagged as warm-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dleval import __version__, decoders, executor, launch, models, options, prompts, results, tasks
from dleval.errors import UserError
from dleval.metrics import Summary, summarize
from dleval.models.compiled import Compiled
from dleval.ranks import Ranks, detect
from dleval.scorers import cut_at_stops
from dleval.types import Generation, Record, Sample

FORMAT_VERSION = results.FORMAT_VERSION
TOO_LONG = ("error", "record")  # --too-long: refuse the run, or record those samples as errors


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


def _settings(
    module: Any, hints: tasks.GenerationHints, overrides: dict[str, Any], checkpoint: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(merged settings, field -> source) for paper defaults <- checkpoint <- task hints <- -D."""
    fields = set(options.field_names(module.Config))
    user = {options.ALIASES.get(k, k) for k in overrides}
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in checkpoint.items():
        key = options.ALIASES.get(key, key)
        merged[key] = value
        sources[key] = "checkpoint"
    if hints.gen_length is not None and "gen_length" in fields and "gen_length" not in user:
        merged["gen_length"], sources["gen_length"] = hints.gen_length, "task"
    if hints.block_length is not None and "block_length" in fields and "block_length" not in user:
        gen = overrides.get("gen_length", merged.get("gen_length"))
        single_block = hints.block_length == hints.gen_length
        merged["block_length"] = gen if single_block and gen is not None else hints.block_length
        sources["block_length"] = "task"
    for hint, value in dataclasses.asdict(hints).items():  # every other hint: taken as is
        if hint not in ("gen_length", "block_length") and value is not None and hint in fields and hint not in user:
            merged[hint], sources[hint] = value, "task"
    merged.update(overrides)
    sources.update({options.ALIASES.get(k, k): "-D" for k in overrides})
    return merged, sources


def decoder_config(
    module: Any, hints: tasks.GenerationHints, overrides: dict[str, Any], name: str, checkpoint: Mapping[str, Any] | None = None
) -> Any:
    """Paper defaults <- the checkpoint's settings <- task hints (fields the decoder has and the
    user did not set) <- -D. Errors name the decoder `name`."""
    merged, _ = _settings(module, hints, overrides, checkpoint or {})
    return options.build(module.Config, merged, f"decoder '{name}'")


def choose_model(requested: str | None, info: decoders.DecoderInfo, log: Callable[[str], None]) -> str:
    if requested:
        return requested
    if torch.cuda.is_available():
        log(f"using {info.paper_model}, the checkpoint the {info.name} paper evaluated (pass --model to choose)")
        return info.paper_model
    log(f"no CUDA device: using the bundled model '{info.cpu_model}' (pass --model to choose)")
    return info.cpu_model


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def sample_seed(seed: int, sample_id: str) -> int:
    """The noise seed of one sample: from (run seed, sample id) only, so a sample's output at
    T > 0 does not depend on its batch, its rank, or the order runs were resumed in."""
    return int(_hash([seed, sample_id])[:8], 16)


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    return {
        "dleval": __version__,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device_name(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "thread_settings": launch.current_threads(),  # intra-op count, its source, cores, OMP_WAIT_POLICY
    }


def completion_of(tokens: tuple[int, ...], tokenizer: Any, stops: tuple[str, ...], eos_ids: set[int]) -> tuple[str, str, int]:
    """(raw text, cut text without special tokens, answer tokens up to the first EOS or stop)."""
    raw = tokenizer.decode(list(tokens), skip_special_tokens=False)
    cut = cut_at_stops(raw, stops)
    clean = tokenizer.decode(tokenizer(cut, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    first_eos = next((i for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
    upto = tokenizer.decode(list(tokens[:first_eos]), skip_special_tokens=False)
    upto_cut = cut_at_stops(upto, stops)
    answer_tokens = first_eos if upto_cut == upto else len(tokenizer(upto_cut, add_special_tokens=False)["input_ids"])
    return raw, clean, answer_tokens


def read_records(path: Path, config_hash: str | None = None) -> list[Record]:
    """Records of one JSONL file or a whole run folder, one per sample id (see dleval.results)."""
    read = results.read_run(path, config_hash) if path.is_dir() else results.read_records(path, config_hash)
    return read.records


def find_resumable(out_dir: Path, suffix: str, sample_set: str) -> tuple[Path | None, list[Path]]:
    """(the newest run folder of this configuration and sample set, folders of this configuration
    with another sample set). Newest by config.json's `created`, then name."""
    same, other = [], []
    for p in out_dir.glob(f"*_{suffix}"):
        try:
            cfg = json.loads((p / results.CONFIG).read_text())
        except (OSError, ValueError):
            continue
        (same if cfg.get("dataset_hash") == sample_set else other).append((cfg.get("created", ""), p.name, p))
    return (max(same)[2] if same else None), [p for *_, p in sorted(other)]


def _max_positions(model: Any) -> int | None:
    """The model's position limit (LLaDA's max_sequence_length), or None when it states none."""
    for holder in (model, getattr(model, "cfg", None), getattr(model, "config", None)):
        for name in ("max_sequence_length", "max_position_embeddings"):
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and value > 0:
                return value
    return None


def _length_check(
    samples: list[Sample], rendered: Mapping[str, prompts.Rendered], canvas: int | None, limit: int | None, model: str, how: str, log
) -> set[str]:
    """Ids of samples whose prompt + canvas exceed the model's positions (recorded as errors
    with --too-long record); any such sample is one sentence and exit 2 otherwise."""
    if limit is None or canvas is None:
        return set()
    if canvas >= limit:
        raise UserError(f"gen_length {canvas} does not fit model '{model}', which has {limit} positions: choose a smaller gen_length")
    too = [s for s in samples if len(rendered[s.id].ids) + canvas > limit]
    if not too:
        return set()
    longest = max(too, key=lambda s: len(rendered[s.id].ids))
    what = (
        f"{len(too)} of {len(samples)} prompts plus the {canvas}-token canvas exceed the {limit} positions of model '{model}' "
        f"(the longest: sample {longest.id}, {len(rendered[longest.id].ids)} prompt tokens)"
    )
    if how == "error":
        raise UserError(f"{what}; pass a model with a longer context, a smaller gen_length, or --too-long record to run the rest")
    log(f"{what}: they are recorded as errors (--too-long record)")
    return {s.id for s in too}


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


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text)[:64].strip("-") or "run"


@dataclass(frozen=True)
class Pipeline:
    """A run's fixed context: what every batch is decoded, timed, scored and labelled with."""

    decoder: Any  # the decoder module: decode(model, prompts, cfg, *, on_step=None[, seeds=None])
    cfg: Any  # its frozen Config
    model: models.Counted
    tokenizer: Any
    spec: tasks.TaskSpec
    rendered: Mapping[str, prompts.Rendered]
    config_hash: str
    seed: int
    eos_ids: frozenset[int]
    ranks: Ranks
    device: str  # the device's name, written into every Record
    too_long: frozenset[str] = frozenset()  # sample ids recorded as errors instead of decoded
    takes_seeds: bool = False  # the decoder accepts per-sample `seeds`


def run(req: RunRequest, log: Callable[[str], None] = print) -> RunResult:
    where = req.ranks or detect()
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
    merged_settings, sources = _settings(decoder, spec.generation, req.decoder_args, ckpt.decoders.get(info.name, {}))
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
    too_long = _length_check(
        samples, rendered, getattr(cfg, "gen_length", None), _max_positions(loaded.model), loaded.name, req.too_long, log
    )
    identity = {
        "decoder": {"name": info.name, "config": dataclasses.asdict(cfg)},
        "task": spec.to_dict(),
        "model": {"name": loaded.name, "fingerprint": loaded.fingerprint, "dtype": loaded.dtype},
        "prompt": {"style": spec.prompt.style, "template_hash": prompts.template_hash(spec.prompt, loaded.tokenizer)},
        "seed": req.seed,
    }
    config_hash = _hash(identity)[:12]
    sample_set = _hash([(s.id, s.question, s.target) for s in samples])[:16]
    suffix = f"{spec.name}_{info.name}_{Path(loaded.name).name.replace('/', '_')}_{config_hash}"
    run_dir, others = find_resumable(req.out_dir, suffix, sample_set) if req.resume else (None, [])
    if req.resume and run_dir is None:
        if others:
            log(f"{others[-1].name} ran this configuration on another sample set: starting a new run folder for these {len(samples)}")
        else:
            log("no earlier run with this configuration: starting a new one")
    if run_dir is None:
        stamp = _slug(where.invocation) if where.named else datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = req.out_dir / f"{stamp}_{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = environment(loaded.model.device)
    config = {
        "format_version": FORMAT_VERSION,
        "run_id": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
        "command": sys.argv,
        "config_hash": config_hash,
        **identity,
        "decoder_sources": {k: v for k, v in sources.items() if k in options.field_names(decoder.Config)},
        "checkpoint_settings": {"file": str(ckpt.path) if ckpt.path else None, "decoder": ckpt.decoders.get(info.name, {})},
        "model_folder": str(loaded.folder),
        "batch_size": batch_size,
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
    before = results.read_run(run_dir, config_hash)
    for note in before.notes:
        log(f"note: {note}")
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
                    "started": datetime.now(UTC).isoformat(timespec="seconds"), "batch_size": batch_size, "environment": env,
                    "conditions": results.conditions(torch.get_num_threads()),
                }
            )
            + "\n"
        )  # fmt: skip

    if where.sharded:
        log(f"{where.describe()}: {len(mine)} of {len(common)} pending samples")
    pipe = Pipeline(
        decoder=decoder, cfg=cfg, model=counted, tokenizer=loaded.tokenizer, spec=spec, rendered=rendered,
        config_hash=config_hash, seed=req.seed,
        eos_ids=frozenset({counted.eos_id} | ({counted.eot_id} if counted.eot_id is not None else set())),
        ranks=where, device=device_name(loaded.model.device), too_long=frozenset(too_long),
        takes_seeds="seeds" in inspect.signature(decoder.decode).parameters,
    )  # fmt: skip
    (run_dir / results.done_name(where.rank, where.world_size)).unlink(missing_ok=True)  # a stale flag of an earlier launch
    interrupted = False
    written: list[Record] = []
    with _sigterm_as_interrupt():
        try:
            with results.ShardWriter(run_dir, where.rank, where.world_size) as shard:
                for note in shard.notes:
                    log(f"note: {note}")
                _loop(
                    pipe,
                    mine,
                    batch_size,
                    shard.write,
                    written,
                    label=f"{spec.name} · {info.name}",
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


@dataclass(frozen=True)
class Decoded:
    """A generation waiting to be scored, with its timing (scoring may run in another thread)."""

    sample: Sample
    gen: Generation
    nfe: int
    rows: int  # rows forwarded per sample of the batch
    seconds: float
    batch: int
    warmup: bool


def _loop(
    pipe: Pipeline, pending: list[Sample], batch_size: int, write: Callable[[Record], None], out: list[Record], label: str, progress: bool
) -> None:
    """Decode batch after batch; score each generation into a Record and append it at once.

    Code tasks run programs to score (up to the task's timeout each), so their scoring goes to a
    thread pool (each thread waits on its sandboxed subprocess) while the next batch decodes:
    the model never waits for a verdict. A Record is written the moment its scoring ends. On
    Ctrl-C / SIGTERM the samples already decoded are still scored and written before the run
    stops; after a kill -9, a decoded but unscored sample has no Record (generations are not
    kept apart) and is decoded again on resume.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    bar = tqdm(total=len(pending), unit="sample", desc=label, disable=not progress, dynamic_ncols=True)
    lock = threading.Lock()
    correct = [0.0]

    def emit(record: Record) -> None:
        with lock:
            write(record)
            out.append(record)
            correct[0] += record.correct
            bar.update(1)
            bar.set_postfix(acc=f"{100 * correct[0] / len(out):.1f}%")

    pool = ThreadPoolExecutor(max_workers=executor.default_workers()) if pipe.spec.scoring.scorer == "code" else None
    futures: list[Future] = []
    try:
        for start in range(0, len(pending), batch_size):
            for item in _decode_batch(pipe, pending[start : start + batch_size], warmup=start == 0):
                if isinstance(item, Record):
                    emit(item)
                elif pool is not None:
                    futures.append(pool.submit(lambda d=item: emit(_record(pipe, d))))
                else:
                    emit(_record(pipe, item))
    finally:
        if pool is not None:
            pool.shutdown(wait=True)  # what was decoded is scored and written, also when stopped
        bar.close()
    for f in futures:
        f.result()  # a write that failed (disk full) is raised here, in the main thread


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_batch(pipe: Pipeline, batch: list[Sample], warmup: bool) -> list[Record | Decoded]:
    """Decode one batch; on failure retry its samples one by one so only a bad one is an error
    (an error Record; a decoded sample is a Decoded, scored by the caller)."""
    skipped = [_error_record(pipe, s, "too long: prompt + canvas exceed the model's positions") for s in batch if s.id in pipe.too_long]
    batch = [s for s in batch if s.id not in pipe.too_long]
    if not batch:
        return skipped
    seeds = [sample_seed(pipe.seed, s.id) for s in batch]
    torch.manual_seed(seeds[0])  # decoders without per-row seeds: at batch 1 this is the sample's own seed
    extra = {"seeds": seeds} if pipe.takes_seeds else {}
    counted = pipe.model
    counted.reset()
    try:
        _sync(counted.device)
        t0 = time.perf_counter()
        gens: list[Generation] = pipe.decoder.decode(counted, [pipe.rendered[s.id].ids for s in batch], pipe.cfg, **extra)
        _sync(counted.device)
        seconds = (time.perf_counter() - t0) / len(batch)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if len(batch) > 1:
            return skipped + [r for s in batch for r in _decode_batch(pipe, [s], warmup)]
        return skipped + [_error_record(pipe, batch[0], f"decode failed: {type(exc).__name__}: {exc}")]
    n = len(batch)
    if hasattr(counted, "row_nfe"):  # per sample: the forwards that computed its row (batched threshold decoders)
        nfes, rows = counted.row_nfe(n), counted.row_rows(n)
    else:
        nfes, rows = [counted.nfe] * n, [counted.rows // n] * n
    return skipped + [Decoded(s, g, nfe, r, seconds, n, warmup) for s, g, nfe, r in zip(batch, gens, nfes, rows)]


def _record(pipe: Pipeline, d: Decoded) -> Record:
    """Score one generation into its Record (a scorer failure is recorded, never raised)."""
    sample, gen = d.sample, d.gen
    raw, completion, answer_tokens = completion_of(gen.tokens, pipe.tokenizer, pipe.spec.prompt.stop, set(pipe.eos_ids))
    error = ""
    try:
        score = tasks.score(pipe.spec, sample, completion)
    except Exception as exc:  # a scorer bug must not lose the generation
        score, error = None, f"scoring failed: {type(exc).__name__}: {exc}"
    return Record(
        sample_id=sample.id,
        config_hash=pipe.config_hash,
        completion=completion,
        raw=raw,
        answer=score.answer if score else "",
        correct=score.correct if score else 0.0,
        metrics=score.metrics if score else {},
        nfe=d.nfe,
        rows_forwarded=d.rows,
        gen_tokens=sum(gen.committed_per_step) - gen.revoked,  # net commits (metrics.py)
        answer_tokens=answer_tokens,
        prompt_tokens=len(pipe.rendered[sample.id].ids),
        seconds=d.seconds,
        committed_per_step=gen.committed_per_step,
        finish=gen.finish,
        batch_size=d.batch,
        warmup=d.warmup,
        error=error,
        target=sample.target,
        committed=sum(gen.committed_per_step),
        revoked=gen.revoked,
        rewritten=gen.rewritten,
        **_where(pipe),
    )


def _where(pipe: Pipeline) -> dict[str, Any]:
    r = pipe.ranks
    return {"rank": r.rank, "world_size": r.world_size, "device": pipe.device, "invocation": r.invocation}


def _error_record(pipe: Pipeline, sample: Sample, error: str) -> Record:
    return Record(
        sample_id=sample.id, config_hash=pipe.config_hash, completion="", raw="", answer="", correct=0.0, metrics={},
        nfe=0, rows_forwarded=0, gen_tokens=0, answer_tokens=0, prompt_tokens=len(pipe.rendered[sample.id].ids),
        seconds=0.0, committed_per_step=(), finish="error", batch_size=1, error=error, target=sample.target, **_where(pipe),
    )  # fmt: skip
