"""`--compile` (issue 14): torch.compile of the model forward gives the same tokens and NFE as eager on CPU.

Slow: inductor compiles C++ kernels for each new shape (minutes on a loaded 2-core machine).
Run: pytest -m slow tests/test_compile.py
"""

from __future__ import annotations

import pytest

from dleval.decoders import fastdllm
from dleval.models.base import Counted
from dleval.models.compiled import Compiled
from tests.conftest import random_llada

PROMPTS = [[5, 9, 12, 7, 30], [8, 3, 44]]


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_compiled_forward_gives_the_same_tokens(cache):
    model = random_llada()
    cfg = fastdllm.Config(gen_length=16, block_length=8, threshold=0.3, cache=cache)
    eager, compiled = Counted(model), Counted(Compiled(model))
    assert fastdllm.decode(compiled, PROMPTS, cfg) == fastdllm.decode(eager, PROMPTS, cfg)
    assert compiled.row_nfe(2) == eager.row_nfe(2)


def test_compile_flag_reaches_the_run(tmp_path, monkeypatch):
    """`dleval run --compile` wraps the model (the wrapper is replaced here: compiling is the slow test above)."""
    from dleval import run as run_mod
    from dleval.cli import main

    wrapped = []

    class Spy:
        def __init__(self, model):
            wrapped.append(model)
            self.inner = model

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def forward(self, ids, **kw):
            return self.inner.forward(ids, **kw)

    monkeypatch.setattr(run_mod, "Compiled", Spy)
    args = ["run", "--decoder", "fastdllm", "--task", "synth_gsm", "--limit", "2", "--out", str(tmp_path), "--no-progress", "--compile"]
    assert main(args) == 0
    assert len(wrapped) == 1
    (config,) = tmp_path.glob("*/config.json")
    assert '"compile": true' in config.read_text()
