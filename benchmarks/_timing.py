"""Shared by the benchmark scripts: a model wrapper that sums the time spent inside forward."""

from __future__ import annotations

import time

import torch


class TimedModel:
    """Wraps a Model; `seconds` sums the wall time of its forwards, the device synchronized on
    both sides, so that (decode wall - seconds) is the decoder's own time outside the model.
    `cpu_seconds` sums this thread's CPU time (`time.thread_time`) inside forward: on a shared
    CPU with one torch thread it is far less noisy than wall time, since waiting for a core
    is not counted."""

    def __init__(self, model) -> None:
        self.inner, self.seconds, self.cpu_seconds = model, 0.0, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _sync(self) -> None:
        device = self.inner.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def forward(self, ids, **kwargs):
        self._sync()
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.inner.forward(ids, **kwargs)
        self._sync()
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.thread_time() - c0
        return out
