"""The run folder on disk: its file names, safe writes, per-shard writer locks, robust reading, merge.

One run folder holds one configuration and one sample set (ARCHITECTURE §6-7):

    config.json                        written once (the first writer wins; never rewritten)
    samples.rank-<r>-of-<w>.jsonl      one shard per writing process: Records appended and
                                       flushed as each sample finishes
    samples.rank-<r>-of-<w>.jsonl.lock the shard's writer lock (fcntl.flock: released by the
                                       kernel when its process dies, so kill -9 never leaves
                                       a run stuck)
    done.rank-<r>-of-<w>.json          a rank's done flag, naming the invocation that wrote it
    samples.jsonl                      the merge: every shard joined, one Record per sample id,
                                       in the run's sample order
    summary.json                       metrics of exactly the Records in samples.jsonl
    *.rejected                         lines no reader could parse, kept aside (never deleted)

A single process is rank 0 of 1 and writes `samples.rank-0-of-1.jsonl`, so one code path serves
one process and a thousand. Readers take the union of `samples.jsonl` and every shard (a shard
of any world size: resume works with a different number of processes), keep the first Record
of each sample id, and say so when a sample id appears twice among the shards. A torn or
malformed line is skipped with a note naming file and line; the shard's owner (or `merge` when
no one owns it) moves it to `<shard>.rejected` and keeps every good line.

Writes of config.json, summary.json and samples.jsonl are atomic (a temporary file, fsync,
`os.replace`; config.json through `os.link`, which fails when the file exists, so racing
ranks cannot both write it). Only types, errors and metrics are imported, so the run loop and
the report both read runs through this one module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dleval.errors import UserError
from dleval.metrics import percentile, ratio, summarize
from dleval.types import Record

FORMAT_VERSION = 2
CONFIG = "config.json"
SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
SHARD_RE = re.compile(r"^samples\.rank-(\d+)-of-(\d+)\.jsonl$")
DONE_RE = re.compile(r"^done\.rank-(\d+)-of-(\d+)\.json$")


def shard_name(rank: int, world_size: int) -> str:
    return f"samples.rank-{rank}-of-{world_size}.jsonl"


def done_name(rank: int, world_size: int) -> str:
    return f"done.rank-{rank}-of-{world_size}.json"


def shards(run_dir: Path) -> list[Path]:
    """Every shard of a run, of any world size, in (world size, rank) order."""
    found = [(p, SHARD_RE.match(p.name)) for p in run_dir.glob("samples.rank-*-of-*.jsonl")]
    return [p for p, m in sorted(((p, m) for p, m in found if m), key=lambda x: (int(x[1][2]), int(x[1][1])))]


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and ((path / SAMPLES).is_file() or bool(shards(path)))


# --- writing --------------------------------------------------------------------------------


def _tmp(path: Path) -> Path:
    """A temporary name beside `path`, unique per writer (process, thread and call)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader (or a kill) never sees a half-written file."""
    tmp = _tmp(path)
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_json_once(path: Path, data: Any) -> bool:
    """Create `path` with `data` unless it exists; True when this call wrote it.

    The content goes to a temporary file that is then hard-linked into place: `link` fails
    when the target exists, so of several ranks racing exactly one writes, and a reader never
    sees a partial file. Filesystems without hard links fall back to O_EXCL creation.
    """
    if path.exists():
        return False
    tmp = _tmp(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(tmp.read_text())
        return True
    finally:
        tmp.unlink(missing_ok=True)


class Busy(UserError):
    """Another live process holds the lock (one writer per shard)."""


@contextlib.contextmanager
def locked(path: Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on `<path>.lock` for the block.

    flock locks belong to the open file, so the kernel drops them when the process dies,
    however it dies: a kill -9 never leaves a run folder stuck. `wait=False` raises Busy at
    once when another process holds it.
    """
    lock_path = path.with_name(path.name + ".lock")
    fh = lock_path.open("a")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{what} is being written by another running process; wait for it to finish (or stop it)") from None
        yield
    finally:
        fh.close()  # closing releases the lock


class ShardWriter:
    """The one writer of one shard: locked, repaired on open, flushed per Record."""

    def __init__(self, run_dir: Path, rank: int, world_size: int) -> None:
        self.path = run_dir / shard_name(rank, world_size)
        self._lock = locked(self.path, f"shard {self.path}")
        self._fh: IO[str] | None = None
        self.notes: list[str] = []

    def __enter__(self) -> ShardWriter:
        self._lock.__enter__()
        try:
            self.notes = repair(self.path)
            self._fh = self.path.open("a")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def write(self, record: Record) -> None:
        assert self._fh is not None
        self._fh.write(record.to_json() + "\n")
        self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
        finally:
            self._lock.__exit__(None, None, None)


# --- reading --------------------------------------------------------------------------------


@dataclass
class Read:
    """Records read from a run, one per sample id, and what the reader had to say about it."""

    records: list[Record]
    notes: list[str] = field(default_factory=list)
    duplicates: int = 0  # Records dropped because their sample id was already read
    bad_lines: int = 0


def _parse(path: Path) -> tuple[list[Record], list[tuple[int, str, str]]]:
    """(Records, [(line number, line, why)]) of one JSONL file; never raises on content."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    out, bad = [], []
    lines = data.split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn = n == len(lines)  # no newline after it: a writer was killed mid-line (or still writes)
        try:
            text = raw.decode()
            out.append(Record.from_json(text))
        except (ValueError, TypeError, AttributeError) as exc:
            why = "torn last line (no newline)" if torn else f"{type(exc).__name__}: {exc}"
            bad.append((n, raw.decode(errors="replace"), why))
    return out, bad


def repair(path: Path) -> list[str]:
    """Move a file's unparsable lines to `<file>.rejected` and keep every good line in place.

    Only a file's owner calls this (its writer, or `merge` holding the shard's lock). A torn
    last line that parses is completed with its newline.
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, bad = _parse(path)
    if not bad:
        if data and not data.endswith(b"\n"):
            with path.open("ab") as fh:
                fh.write(b"\n")
        return []
    rejected = path.with_name(path.name + ".rejected")
    with rejected.open("a") as fh:
        for n, line, why in bad:
            fh.write(json.dumps({"line": n, "why": why, "text": line}) + "\n")
    write_atomic(path, "".join(r.to_json() + "\n" for r in records))
    return [f"{path} line {n}: {why}; moved to {rejected.name}" for n, _, why in bad]


def read_records(path: Path, config_hash: str | None = None) -> Read:
    """Records of one JSONL file; bad lines are skipped with a note naming file and line."""
    records, bad = _parse(path)
    notes = [f"{path} line {n}: skipped ({why})" for n, _, why in bad]
    if config_hash is not None:
        records = [r for r in records if r.config_hash == config_hash]
    return _dedup(records, notes, str(path), bad=len(bad))


def _dedup(records: list[Record], notes: list[str], where: str, bad: int = 0) -> Read:
    seen: dict[str, Record] = {}
    dup = 0
    for r in records:
        if r.sample_id in seen:
            dup += 1
        else:
            seen[r.sample_id] = r
    if dup:
        notes.append(f"{where}: {dup} duplicate Record(s) of a sample id dropped (the first one of each is kept)")
    return Read(list(seen.values()), notes, dup, bad)


def read_run(run_dir: Path, config_hash: str | None = None) -> Read:
    """Every Record of a run folder (shards, then samples.jsonl), one per sample id.

    The merged samples.jsonl repeats the shards, so only duplicates among the shards (two
    processes decoded one sample), or inside samples.jsonl itself (written before this format),
    are counted and noted.
    """
    notes: list[str] = []
    from_shards: list[Record] = []
    bad = 0
    for path in shards(run_dir):
        records, lines = _parse(path)
        bad += len(lines)
        notes += [f"{path} line {n}: skipped ({why})" for n, _, why in lines]
        from_shards += [r for r in records if config_hash is None or r.config_hash == config_hash]
    shard_read = _dedup(from_shards, notes, f"{run_dir} shards")
    merged = read_records(run_dir / SAMPLES, config_hash)
    have = {r.sample_id for r in shard_read.records}
    records = shard_read.records + [r for r in merged.records if r.sample_id not in have]
    return Read(records, notes + merged.notes, shard_read.duplicates + merged.duplicates, bad + merged.bad_lines)


def read_config(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / CONFIG).read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} is not a run folder (it has no {CONFIG})") from None
    except ValueError as exc:
        raise UserError(f"{run_dir / CONFIG} is not valid JSON ({exc})") from None


# --- conditions, done flags, merge --------------------------------------------------------


def conditions(torch_threads: int | None = None) -> dict[str, Any]:
    """The machine's state now: what a latency measured under it depends on."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    out: dict[str, Any] = {"host": socket.gethostname(), "cpu_count": os.cpu_count(), "loadavg": load}
    if torch_threads is not None:
        out["torch_threads"] = torch_threads
    return out


def write_done(run_dir: Path, rank: int, world_size: int, data: dict[str, Any]) -> None:
    write_json_atomic(run_dir / done_name(rank, world_size), {"rank": rank, "world_size": world_size, **data})


def done_ranks(run_dir: Path, world_size: int, invocation: str) -> set[int]:
    """Ranks of `world_size` whose done flag was written by `invocation`."""
    out = set()
    for p in run_dir.glob(f"done.rank-*-of-{world_size}.json"):
        m = DONE_RE.match(p.name)
        try:
            if m and json.loads(p.read_text()).get("invocation") == invocation:
                out.add(int(m[1]))
        except (OSError, ValueError):
            continue
    return out


def devices(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Latency and TPS per device kind, labelled, and how many processes of it ran.

    NFE and TPF are hardware-free and add up over samples; seconds do not add up across
    devices (or loads), so they are only ever averaged within one device kind.
    """
    by: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by[r.device or "unknown"].append(r)
    out = []
    for device, recs in sorted(by.items()):
        s = summarize(recs)
        timed = [r.seconds for r in recs if not r.error and not r.warmup and r.seconds > 0]
        out.append(
            {
                "device": device,
                "processes": len({(r.invocation, r.rank, r.world_size) for r in recs}),
                "invocations": len({r.invocation for r in recs}),
                "world_sizes": sorted({r.world_size for r in recs}),
                "samples": len(recs),
                "timed": len(timed),
                "latency_mean": ratio(sum(timed), len(timed)),
                "latency_p50": percentile(timed, 50),
                "tps": s.tps,
            }
        )
    return out


@dataclass
class Merged:
    run_dir: Path
    records: list[Record]  # in the run's sample order
    planned: int  # samples the run was made for
    missing: list[str]
    notes: list[str]
    duplicates: int
    written: bool  # samples.jsonl / summary.json were (re)written by this call

    @property
    def complete(self) -> bool:
        return not self.missing


def merge(run_dir: Path, *, end_conditions: dict[str, Any] | None = None, force: bool = False) -> Merged:
    """Join every shard into samples.jsonl + summary.json, one Record per sample id.

    Nothing is rewritten when samples.jsonl already holds exactly these Records and a summary
    exists (`force` rewrites anyway): a command that adds nothing leaves a finished run's
    files byte-identical. Shards no live process owns are repaired (bad lines set aside)
    first. Safe to call from several processes at once (serialised by a lock).
    """
    config = read_config(run_dir)
    config_hash = config.get("config_hash")
    with locked(run_dir / SAMPLES, f"{run_dir / SAMPLES}", wait=True):
        notes: list[str] = []
        for path in shards(run_dir):
            try:
                with locked(path, str(path)):
                    notes += repair(path)
            except Busy:
                pass  # its writer is alive and repairs its own shard; readers skip the bad lines
        got = read_run(run_dir, config_hash)
        notes += got.notes
        planned = list(config.get("sample_ids") or [])
        order = {sid: i for i, sid in enumerate(planned)}
        records = sorted(got.records, key=lambda r: (order.get(r.sample_id, len(order)), r.sample_id))
        present = {r.sample_id for r in records}
        missing = [sid for sid in planned if sid not in present]
        extra = len(present - set(order)) if planned else 0
        if extra:
            notes.append(f"{run_dir}: {extra} Record(s) of samples outside this run's sample list are kept")
        text = "".join(r.to_json() + "\n" for r in records)
        samples_path, summary_path = run_dir / SAMPLES, run_dir / SUMMARY
        current = samples_path.read_text() if samples_path.is_file() else None
        written = force or current != text or not summary_path.is_file()
        if written:
            write_atomic(samples_path, text)
            write_summary(run_dir, config, records, len(planned) or len(records), missing, end_conditions)
    return Merged(run_dir, records, len(planned) or len(records), missing, notes, got.duplicates, written)


def write_summary(
    run_dir: Path,
    config: dict[str, Any],
    records: Sequence[Record],
    planned: int,
    missing: Sequence[str],
    end_conditions: dict[str, Any] | None = None,
) -> None:
    """summary.json for exactly `records`: the metrics, where they ran, and what is missing."""
    summary = summarize(records)
    write_json_atomic(
        run_dir / SUMMARY,
        {
            "format_version": FORMAT_VERSION,
            "run_id": config.get("run_id", run_dir.name),
            "config_hash": config.get("config_hash"),
            "task": config.get("task", {}).get("name"),
            "decoder": config.get("decoder", {}).get("name"),
            "model": config.get("model", {}).get("name"),
            "primary_filter": config.get("task", {}).get("scoring", {}).get("primary"),
            "samples": planned,
            "present": len(records),
            "complete": not missing,
            "missing": list(missing[:100]),
            "summary": dataclasses.asdict(summary),
            "devices": devices(records),
            "invocations": sorted(Counter(r.invocation for r in records)),
            "conditions": end_conditions if end_conditions is not None else conditions(),
        },
    )


def missing_sentence(merged: Merged, limit: int = 10) -> str:
    shown = ", ".join(merged.missing[:limit]) + (f" and {len(merged.missing) - limit} more" if len(merged.missing) > limit else "")
    return f"{merged.run_dir} is missing {len(merged.missing)} of {merged.planned} samples ({shown})"
