"""Run folders and sweep records as the report reads them: the files the run loop writes
(`config.json`, the Records through `dleval.results`) and `sweep.json`, into one `Run` per folder.

A Run knows the keys the report groups by: `setting_key` (a leaderboard row: everything in the
config hash but the seed, plus the samples) and `curve_key` (a curve: task, model, prompt and
samples, any decoder), and whether it is the one-token-per-step baseline point.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dleval import results
from dleval.errors import UserError
from dleval.identity import digest
from dleval.types import Record

BASELINE_DECODER = "llada"


@dataclass(frozen=True)
class Run:
    """One run folder as read from disk."""

    path: Path
    run_id: str
    config_hash: str
    created: str
    model: str
    model_fingerprint: str
    dtype: str
    decoder: str
    decoder_config: dict[str, Any]
    task: str
    task_spec: dict[str, Any]
    prompt_style: str
    template_hash: str
    seed: int
    dataset_hash: str
    batch_size: int
    expected: int | None  # samples the run was asked for (summary.json), None when unknown
    environment: dict[str, Any]
    command: tuple[str, ...]
    records: tuple[Record, ...]
    timing_rerun_of: str = ""  # run id whose latency this run re-times (dleval sweep --retime-baseline)
    conditions: dict[str, Any] = field(default_factory=dict)  # machine load when the run started; {} for old runs

    @property
    def invocations(self) -> frozenset[str]:
        """Invocation ids of the Records; "" for Records written before invocation ids."""
        return frozenset(r.invocation for r in self.records)

    @property
    def devices(self) -> frozenset[str]:
        """Devices of the Records (the config's device for Records that predate the field)."""
        fallback = str(self.environment.get("device", ""))
        return frozenset(r.device or fallback for r in self.records)

    @property
    def setting_key(self) -> str:
        """Identity of the row: everything in the config hash but the seed, plus the samples."""
        return digest(
            [self.decoder, self.decoder_config, self.task_spec, self.model, self.model_fingerprint, self.template_hash, self.dataset_hash]
        )[:12]

    @property
    def curve_key(self) -> str:
        return digest([self.task_spec, self.model, self.model_fingerprint, self.template_hash, self.dataset_hash])[:12]

    @property
    def one_token_per_step(self) -> bool:
        steps = self.decoder_config.get("steps")
        return self.decoder == BASELINE_DECODER and (steps is None or steps == self.decoder_config.get("gen_length"))


def is_sweep_dir(path: Path) -> bool:
    return (path / "sweep.json").is_file()


def read_sweep(path: Path) -> list[Path]:
    """The run folders a sweep record lists (paths are relative to the sweep folder)."""
    try:
        data = json.loads((path / "sweep.json").read_text())
        base = data.get("baseline") or {}
        listed = [p["run_dir"] for p in data["points"]] + [base[k] for k in ("run_dir", "timing_run_dir") if k in base]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / 'sweep.json'} is not a dleval sweep record ({exc})") from None
    out = []
    for rel in listed:
        run = (path / rel).resolve()
        if not results.is_run_dir(run):
            raise UserError(f"sweep {path.name} lists {rel}, which is not a run folder (moved or deleted?)")
        out.append(run)
    return out


def find_runs(paths: Iterable[Path]) -> list[Path]:
    """Run folders named directly, listed by sweep records, or found one or two levels below a folder."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UserError(f"'{path}' does not exist")
        if results.is_run_dir(path):
            found[path.resolve()] = None
        elif is_sweep_dir(path):
            found.update(dict.fromkeys(read_sweep(path)))
        elif path.is_dir():
            inner = [p for p in sorted(path.iterdir()) if p.is_dir()]
            deeper = [q for p in inner if not results.is_run_dir(p) and not is_sweep_dir(p) for q in sorted(p.iterdir()) if q.is_dir()]
            hits = [p for p in [*inner, *deeper] if results.is_run_dir(p) or is_sweep_dir(p)]
            if not hits:
                raise UserError(f"'{path}' holds no run folders (config.json + samples.jsonl) or sweep records (sweep.json)")
            for p in hits:
                if results.is_run_dir(p):
                    found[p.resolve()] = None
                else:
                    found.update(dict.fromkeys(read_sweep(p)))
        else:
            raise UserError(f"'{path}' is not a run folder, a sweep folder or a folder of them")
    return list(found)


def read_run(path: Path, notes: list[str] | None = None) -> Run:
    """One run folder, its Records read through dleval.results (every shard and samples.jsonl,
    one Record per sample id; bad lines and duplicates skipped with a note appended to `notes`)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
        config_hash = cfg["config_hash"]
        read = results.read_run(path, config_hash)
        if notes is not None:
            notes.extend(read.notes)
        run = Run(
            path=path,
            run_id=cfg.get("run_id", path.name),
            config_hash=config_hash,
            created=cfg.get("created", ""),
            model=cfg["model"]["name"],
            model_fingerprint=cfg["model"].get("fingerprint", ""),
            dtype=cfg["model"].get("dtype", ""),
            decoder=cfg["decoder"]["name"],
            decoder_config=dict(cfg["decoder"]["config"]),
            task=cfg["task"]["name"],
            task_spec=dict(cfg["task"]),
            prompt_style=cfg["prompt"]["style"],
            template_hash=cfg["prompt"].get("template_hash", ""),
            seed=int(cfg.get("seed", 0)),
            dataset_hash=cfg.get("dataset_hash", ""),
            batch_size=int(cfg.get("batch_size", 1)),
            expected=summary.get("samples"),
            environment=dict(cfg.get("environment", {})),
            command=tuple(cfg.get("command", ())),
            records=tuple(read.records),
            timing_rerun_of=str(cfg.get("timing_rerun_of") or ""),
            conditions=dict(cfg.get("conditions") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is not a readable dleval run ({type(exc).__name__}: {exc})") from None
    return run
