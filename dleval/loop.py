"""The batch loop: decode pending samples batch by batch, time each decode, and score each
Generation into a Record that is written the moment it exists.

`dleval.run` wires a run's pieces into a `Pipeline` (decoder, config, counted model, tokenizer,
task, rendered prompts) and hands this rank's pending samples to `run_samples`. Timing is done
here only: device sync around each decode, the batch's wall time split evenly over its samples,
each rank's first batch flagged as warm-up; NFE is read from the `Counted` wrapper after
`decode()` returns. A batch that fails is retried one sample at a time, so only a bad sample
becomes an error Record; a scorer failure is recorded, never raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from dleval import executor, models, prompts, tasks
from dleval.identity import sample_seed
from dleval.ranks import Ranks
from dleval.scorers import completion_of
from dleval.types import Generation, Record, Sample


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


def run_samples(
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
