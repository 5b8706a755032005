"""Hugging Face hub access that fails fast when the hub cannot be reached.

Without a network `datasets` and `huggingface_hub` retry each request for ~25 s before failing.
`offline_reason()` tells in well under a second (cached per process) whether the hub is out of
reach: `HF_HUB_OFFLINE` (or `HF_DATASETS_OFFLINE`, `TRANSFORMERS_OFFLINE`) set, or the endpoint
(or the HTTPS proxy) not accepting a TCP connection within 2 s. Loaders then run their hub call
inside `offline()`, which puts both libraries in their offline mode: a cached dataset or
snapshot still loads, anything else fails at once.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT_S = 2.0


def offline_reason() -> str | None:
    """Why the hub is out of reach ("HF_HUB_OFFLINE is set", "huggingface.co:443 is unreachable
    (...)"), or None when it may be reachable."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var} is set"
    return _probe(_target())


def _target() -> tuple[str, int]:
    """(host, port) a hub request connects to first: the HTTPS proxy if one is set, else the endpoint."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


@functools.cache
def _probe(target: tuple[str, int]) -> str | None:
    try:
        socket.create_connection(target, timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{target[0]}:{target[1]} is unreachable ({exc.strerror or type(exc).__name__})"
    return None


@contextmanager
def offline() -> Iterator[None]:
    """`huggingface_hub` and `datasets` in offline mode for the block (cache only, no retries).

    Both read their offline flag from module constants set at import, so the constants of the
    imported modules are set too, and restored afterwards."""
    import huggingface_hub.constants  # noqa: F401  (a dependency of datasets and transformers)

    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    patched: list[tuple[object, str, object]] = []
    for module, names in (
        ("huggingface_hub.constants", ("HF_HUB_OFFLINE",)),
        ("datasets.config", ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")),
    ):
        mod = sys.modules.get(module)
        for name in names:
            if mod is not None and hasattr(mod, name):
                patched.append((mod, name, getattr(mod, name)))
                setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in patched:
            setattr(mod, name, value)
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
