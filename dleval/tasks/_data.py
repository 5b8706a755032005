"""Where benchmark records come from, for the loaders: a local data dir, else the Hugging Face Hub.

A data dir (`--data-dir`, `$DLEVAL_DATA_DIR`) is laid out like the project's `shared/data`
(`gsm8k/test.jsonl`, `mbpp/mbpp.jsonl`, ...; see the README's Benchmarks section). When the
spec's file is not there, the records come from the hub at the spec's pinned revision through
`datasets` (its cache makes later offline runs work; when the hub is evidently out of reach,
only the cache is tried: `dleval.hub`); when that fails too, a UserError says in one sentence
which file to put where. Records are plain dicts, in the file's order.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dleval import hub
from dleval.errors import UserError

if TYPE_CHECKING:
    from dleval.tasks import TaskSpec


def read_file(path: Path, fields: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """JSON Lines (optionally .gz) or one JSON array, each record a JSON object with `fields`
    ("a|b": either). A malformed file is a UserError naming the file and line."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path} could not be read ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path} line {line} is not UTF-8 text (byte {exc.start}): a binary file where a JSON Lines file belongs?"
        ) from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{path} line {getattr(exc, 'lineno', '?')} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        return [_checked(r, fields, f"{path} record {n}") for n, r in enumerate(records, 1)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(
                f"{path} line {n} is not valid JSON ({getattr(exc, 'msg', exc)}, column {getattr(exc, 'colno', '?')})"
            ) from None
        out.append(_checked(record, fields, f"{path} line {n}"))
    return out


def _checked(record: Any, fields: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object (it is a {type(record).__name__})")
    for name in fields:
        if not any(alt in record for alt in name.split("|")):
            keys = ", ".join(list(record)[:8]) or "none"
            wanted = "' or '".join(name.split("|"))
            raise UserError(f"{where} has no '{wanted}' field (it has: {keys})")
    return record


def load(
    spec: TaskSpec, data_dir: Path | None, local: str, hub_splits: tuple[str, ...], fields: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Records of `local` under the data dir, else of the hub dataset's `hub_splits`, concatenated;
    each must have `fields` (see `read_file`)."""
    if data_dir is not None and (Path(data_dir) / local).is_file():
        return read_file(Path(data_dir) / local, fields)
    data = spec.data
    offline = hub.offline_reason()  # then only the datasets cache is tried: no ~25 s of retries
    try:
        import datasets

        out: list[dict[str, Any]] = []
        with hub.offline() if offline else contextlib.nullcontext():
            for split in hub_splits:
                out += list(datasets.load_dataset(data.hub, data.hub_config or None, split=split, revision=data.revision or None))
    except Exception as exc:  # offline, unknown revision, no `datasets`...: all end the same way
        where = f"{Path(data_dir) / local} is missing" if data_dir is not None else "no data dir was given"
        why = f"offline: {offline}, and it is not in the datasets cache" if offline else type(exc).__name__
        raise UserError(
            f"task '{spec.name}' has no data: {where} and {data.hub} could not be loaded from the Hugging Face Hub "
            f"({why}); put {local} under a data dir laid out like shared/data and pass --data-dir DIR "
            f"(or set DLEVAL_DATA_DIR)"
        ) from None
    return [_checked(r, fields, f"hub dataset {data.hub} record {n}") for n, r in enumerate(out, 1)]


def fill(template: str, **fields: str) -> str:
    """Replace `{name}` for the given names only, so other braces (`\\boxed{}`) stay literal."""
    pattern = "|".join(re.escape(name) for name in fields)
    return re.sub(r"\{(" + pattern + r")\}", lambda m: fields[m.group(1)], template) if fields else template


def check_filters(spec: TaskSpec, allowed: tuple[str, ...]) -> None:
    for name in spec.scoring.filters:
        if name not in allowed:
            raise UserError(f"task '{spec.name}' has no filter '{name}'; choose from {', '.join(allowed)}")


def fewshot_picks(spec: TaskSpec, n_docs: int, n_pool: int, same_split: bool) -> list[list[int]]:
    """Exemplar indices into the pool for each document, as lm-eval's samplers draw them.

    `first_n`: the first `shots`, for every document. `random` (lm-eval's default sampler): one
    `random.Random(fewshot_seed)` shared by all documents in order, each drawing `shots` with
    `sample`, one more when the pool is the evaluated split, the document itself then dropped.
    So the exemplars of document i depend on the documents before it (lm-eval runs split over
    several ranks draw differently again: each rank has its own generator).
    """
    import random

    shots, sampler = spec.prompt.shots, spec.prompt.fewshot_sampler
    if shots == 0:
        return [[] for _ in range(n_docs)]
    if shots > n_pool:
        raise UserError(f"task '{spec.name}' asks for {shots} exemplars but has only {n_pool}")
    if sampler == "first_n":
        return [list(range(shots)) for _ in range(n_docs)]
    if sampler != "random":
        raise UserError(f"task '{spec.name}': fewshot_sampler must be 'first_n' or 'random', not '{sampler}'")
    rng = random.Random(spec.prompt.fewshot_seed)
    picks = []
    for i in range(n_docs):
        drawn = rng.sample(range(n_pool), shots + 1 if same_split else shots)
        picks.append([j for j in drawn if not (same_split and j == i)][:shots])
    return picks


def exemplar(spec: TaskSpec, question: str, answer: str) -> tuple[str, str]:
    """A worded (question, answer) pair; lm-eval writes gen_prefix and a space before the answer."""
    prefix = spec.prompt.gen_prefix + " " if spec.prompt.gen_prefix else ""
    return question, prefix + answer
