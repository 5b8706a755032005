"""THE loop: task -> prompt -> decode(model) -> score -> Record, appended as each sample finishes.

`run(request)` resolves the decoder config (paper defaults <- the task's generation hints <- -D),
the task (spec <- -T), and the model (--model, else the bundled tiny model without CUDA, else
the checkpoint the decoder's paper used). It writes `results/runs/<run_id>/config.json` (all that
is needed to reproduce the run), appends one Record per sample to `samples.jsonl` (flushed per
sample, so Ctrl-C or a crash loses nothing finished), and writes `summary.json`. With `resume`,
the newest run of the same config hash is continued and its finished sample ids are skipped.
Timing is done here only: device sync around each decode, the first batch flagged as warm-up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from dleval import __version__, decoders, models, options, prompts, tasks
from dleval.errors import UserError
from dleval.metrics import Summary, summarize
from dleval.scorers import cut_at_stops
from dleval.types import Generation, Record, Sample

FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunRequest:
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


@dataclass
class RunResult:
    run_dir: Path
    summary: Summary
    records: list[Record]
    config: dict[str, Any]
    complete: bool


class Interrupted(Exception):
    def __init__(self, result: RunResult) -> None:
        super().__init__("interrupted")
        self.result = result


def decoder_config(module: Any, hints: tasks.GenerationHints, overrides: dict[str, Any], name: str) -> Any:
    """Paper defaults <- task hints (fields the decoder has and the user did not set) <- -D."""
    fields = set(options.field_names(module.Config))
    user = {options.ALIASES.get(k, k) for k in overrides}
    merged: dict[str, Any] = {}
    if hints.gen_length is not None and "gen_length" in fields and "gen_length" not in user:
        merged["gen_length"] = hints.gen_length
    if hints.block_length is not None and "block_length" in fields and "block_length" not in user:
        gen = overrides.get("gen_length", merged.get("gen_length"))
        single_block = hints.block_length == hints.gen_length
        merged["block_length"] = gen if single_block and gen is not None else hints.block_length
    for name, value in dataclasses.asdict(hints).items():  # every other hint: taken as is
        if name not in ("gen_length", "block_length") and value is not None and name in fields and name not in user:
            merged[name] = value
    merged.update(overrides)
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


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {
        "dleval": __version__,
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": gpu or device.type,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
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


def find_resumable(out_dir: Path, suffix: str) -> Path | None:
    runs = sorted(p for p in out_dir.glob(f"*_{suffix}") if (p / "samples.jsonl").is_file())
    return runs[-1] if runs else None


def read_records(path: Path, config_hash: str | None = None) -> list[Record]:
    """Records of a samples.jsonl; a torn last line (a killed run) is dropped and trimmed."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    out = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = Record.from_json(line)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{path} line {n} is not a dleval record ({exc}); move the file away to start over") from None
        if config_hash is None or rec.config_hash == config_hash:
            out.append(rec)
    return out


def run(req: RunRequest, log: Callable[[str], None] = print) -> RunResult:
    info = decoders.info(req.decoder, req.model_family)
    decoder = decoders.load(info.name)
    spec = tasks.load_task(req.task, req.task_args)
    cfg = decoder_config(decoder, spec.generation, req.decoder_args, info.name)
    samples = tasks.load_samples(spec, req.data_dir)
    if req.limit is not None:
        samples = samples[: req.limit]
    if not samples:
        raise UserError(f"task '{spec.name}' has no samples to run")
    loaded = models.load(choose_model(req.model, info, log), device=req.device)
    counted = models.Counted(loaded.model)
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
    identity = {
        "decoder": {"name": info.name, "config": dataclasses.asdict(cfg)},
        "task": spec.to_dict(),
        "model": {"name": loaded.name, "fingerprint": loaded.fingerprint, "dtype": loaded.dtype},
        "prompt": {"style": spec.prompt.style, "template_hash": prompts.template_hash(spec.prompt, loaded.tokenizer)},
        "seed": req.seed,
    }
    config_hash = _hash(identity)[:12]
    model_short = Path(loaded.name).name.replace("/", "_")
    suffix = f"{spec.name}_{info.name}_{model_short}_{config_hash}"
    run_dir = find_resumable(req.out_dir, suffix) if req.resume else None
    if req.resume and run_dir is None:
        log("no earlier run with this configuration: starting a new one")
    if run_dir is None:
        run_dir = req.out_dir / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}_{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "run_id": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "config_hash": config_hash,
        **identity,
        "model_folder": str(loaded.folder),
        "batch_size": batch_size,
        "limit": req.limit,
        "data_dir": str(req.data_dir) if req.data_dir else None,
        "dataset_hash": _hash([(s.id, s.question, s.target) for s in samples])[:16],
        "environment": environment(loaded.model.device),
    }
    (run_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    samples_path = run_dir / "samples.jsonl"
    wanted = {s.id: s.target for s in samples}
    # Resume only what belongs to this sample set: ids beyond a smaller --limit are left in the
    # file, and a record whose target differs (changed data) is redone.
    done = {r.sample_id: r for r in read_records(samples_path, config_hash) if wanted.get(r.sample_id, None) == r.target}
    if done:
        log(f"resuming {run_dir}: {len(done)} of {len(samples)} samples already finished")
    pending = [s for s in samples if s.id not in done]
    new: list[Record] = []
    interrupted = False
    try:
        with samples_path.open("a") as sink:
            _loop(pending, rendered, decoder, cfg, counted, loaded.tokenizer, spec, batch_size, config_hash, req, sink, new)
    except KeyboardInterrupt:
        interrupted = True
    ordered = {s.id: i for i, s in enumerate(samples)}
    records = sorted({**done, **{r.sample_id: r for r in new}}.values(), key=lambda r: ordered[r.sample_id])
    summary = summarize(records)
    complete = len(records) == len(samples)
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "run_id": run_dir.name,
                "config_hash": config_hash,
                "task": spec.name,
                "decoder": info.name,
                "model": loaded.name,
                "primary_filter": spec.scoring.primary,
                "samples": len(samples),
                "complete": complete,
                "summary": dataclasses.asdict(summary),
            },
            indent=2,
        )
        + "\n"
    )
    result = RunResult(run_dir, summary, records, config, complete)
    if interrupted:
        raise Interrupted(result)
    return result


def _loop(pending: list[Sample], rendered, decoder, cfg, counted, tokenizer, spec, batch_size, config_hash, req, sink, out) -> None:
    from tqdm import tqdm

    device = counted.device
    eos_ids = {counted.eos_id} | ({counted.eot_id} if counted.eot_id is not None else set())
    bar = tqdm(total=len(pending), unit="sample", desc=f"{spec.name} · {req.decoder}", disable=not req.progress, dynamic_ncols=True)
    correct = 0.0
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        warmup = start == 0
        for record in _decode_batch(
            batch, rendered, decoder, cfg, counted, tokenizer, spec, config_hash, req.seed, device, eos_ids, warmup
        ):
            sink.write(record.to_json() + "\n")
            sink.flush()
            out.append(record)
            correct += record.correct
        bar.update(len(batch))
        bar.set_postfix(acc=f"{100 * correct / len(out):.1f}%")
    bar.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_batch(batch, rendered, decoder, cfg, counted, tokenizer, spec, config_hash, seed, device, eos_ids, warmup) -> list[Record]:
    """Decode one batch; on failure retry its samples one by one so only a bad one is an error."""
    torch.manual_seed(int(_hash([seed, batch[0].id])[:8], 16))  # T>0 noise independent of resume and order
    counted.reset()
    try:
        _sync(device)
        t0 = time.perf_counter()
        gens: list[Generation] = decoder.decode(counted, [rendered[s.id].ids for s in batch], cfg)
        _sync(device)
        seconds = (time.perf_counter() - t0) / len(batch)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if len(batch) > 1:
            return [
                r
                for s in batch
                for r in _decode_batch([s], rendered, decoder, cfg, counted, tokenizer, spec, config_hash, seed, device, eos_ids, warmup)
            ]
        return [_error_record(batch[0], rendered, config_hash, f"decode failed: {type(exc).__name__}: {exc}")]
    nfe, rows = counted.nfe, counted.rows
    records = []
    for sample, gen in zip(batch, gens):
        raw, completion, answer_tokens = completion_of(gen.tokens, tokenizer, spec.prompt.stop, eos_ids)
        error = ""
        try:
            score = tasks.score(spec, sample, completion)
        except Exception as exc:  # a scorer bug must not lose the generation
            score, error = None, f"scoring failed: {type(exc).__name__}: {exc}"
        records.append(
            Record(
                sample_id=sample.id,
                config_hash=config_hash,
                completion=completion,
                raw=raw,
                answer=score.answer if score else "",
                correct=score.correct if score else 0.0,
                metrics=score.metrics if score else {},
                nfe=nfe,
                rows_forwarded=rows // len(batch),
                gen_tokens=sum(gen.committed_per_step),
                answer_tokens=answer_tokens,
                prompt_tokens=len(rendered[sample.id].ids),
                seconds=seconds,
                committed_per_step=gen.committed_per_step,
                finish=gen.finish,
                batch_size=len(batch),
                warmup=warmup,
                error=error,
                target=sample.target,
            )
        )
    return records


def _error_record(sample: Sample, rendered, config_hash: str, error: str) -> Record:
    return Record(
        sample_id=sample.id, config_hash=config_hash, completion="", raw="", answer="", correct=0.0, metrics={},
        nfe=0, rows_forwarded=0, gen_tokens=0, answer_tokens=0, prompt_tokens=len(rendered[sample.id].ids),
        seconds=0.0, committed_per_step=(), finish="error", batch_size=1, error=error, target=sample.target,
    )  # fmt: skip
