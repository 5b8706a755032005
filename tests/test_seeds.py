"""Per-sample noise seeds through the run loop (issue 11): at T > 0 a sample's completion depends
on (seed, sample id) only, not on the batch size, the samples around it, or how the run was resumed.

Run: pytest tests/test_seeds.py
"""

from __future__ import annotations

import pytest

from dleval.identity import sample_seed
from dleval.run import RunRequest, run


def completions(tmp_path, name, **kw):
    req = RunRequest(decoder=kw.pop("decoder", "fastdllm"), task="synth_gsm", model="tiny", out_dir=tmp_path / name, progress=False, **kw)
    return {r.sample_id: (r.completion, r.nfe) for r in run(req, log=lambda m: None).records}


@pytest.mark.parametrize("decoder", ["fastdllm", "llada"])
def test_temperature_outputs_equal_at_batch_one_and_eight(tmp_path, decoder):
    hot = {"temperature": 2.0}  # hot enough that the confident tiny model's choices do change with the noise
    one = completions(tmp_path, "one", decoder=decoder, limit=8, batch_size=1, decoder_args=hot)
    eight = completions(tmp_path, "eight", decoder=decoder, limit=8, batch_size=8, decoder_args=hot)
    assert one == eight
    other = completions(tmp_path, "seed", decoder=decoder, limit=8, batch_size=8, decoder_args=hot, seed=99)
    assert other != eight  # the noise is real: another run seed gives other completions


def test_resumed_run_equals_a_straight_one(tmp_path):
    hot = {"temperature": 0.8}
    straight = completions(tmp_path, "straight", limit=12, batch_size=4, decoder_args=hot)
    completions(tmp_path, "grown", limit=5, batch_size=4, decoder_args=hot)
    grown = completions(tmp_path, "grown", limit=12, batch_size=4, decoder_args=hot, resume=True)  # the rest, batched differently
    assert grown == straight


def test_sample_seed_is_a_function_of_seed_and_id():
    assert sample_seed(1234, "a") == sample_seed(1234, "a") != sample_seed(1234, "b") != sample_seed(1, "b")
    assert 0 <= sample_seed(1234, "a") < 2**32
