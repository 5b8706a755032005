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
        device = torch.device(model.device)  # looked up once: the wrapper's own cost is not the decoder's
        self._cuda = device if device.type == "cuda" else None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def forward(self, ids, **kwargs):
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = self.inner.forward(ids, **kwargs)
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
        c1, t1 = time.thread_time(), time.perf_counter()
        self.seconds += t1 - t0
        self.cpu_seconds += c1 - c0
        return out
