"""Offline hub access fails fast: HF_HUB_OFFLINE honoured, an unreachable hub detected by one
probe, and then the libraries run in offline mode (cache only) instead of retrying for ~25 s.

Never touches the network: the probe's socket is a fake. Run: pytest tests/test_hub.py
"""

from __future__ import annotations

import socket

import pytest

from dleval import hub, models, tasks
from dleval.errors import UserError


@pytest.fixture
def no_hub(monkeypatch):
    """An unreachable hub: every TCP connection fails at once; returns the attempted targets."""
    attempts: list[tuple[str, int]] = []

    def refuse(target, timeout=None, *args, **kwargs):
        attempts.append(target)
        raise ConnectionRefusedError(111, "Connection refused")

    for var in hub.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub._probe.cache_clear()
    yield attempts
    hub._probe.cache_clear()


def test_offline_variable_is_honoured_without_probing(monkeypatch, no_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    assert no_hub == []


def test_unreachable_hub_is_probed_once(no_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    assert "hub.example:8443 is unreachable (Connection refused)" in hub.offline_reason()
    hub.offline_reason()
    assert no_hub == [("hub.example", 8443)]  # cached: one probe per process


def test_a_proxy_is_what_is_probed(no_hub, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    hub.offline_reason()
    assert no_hub == [("proxy.local", 3128)]


def test_offline_mode_is_set_inside_and_restored_after(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = hc.HF_HUB_OFFLINE
    with hub.offline():
        assert hc.HF_HUB_OFFLINE is True and hc.is_offline_mode()
    assert hc.HF_HUB_OFFLINE == before and "HF_HUB_OFFLINE" not in __import__("os").environ


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_missing_data_fails_in_offline_mode_with_the_reason(tmp_path, monkeypatch, no_hub, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen = {}
    import datasets

    real = datasets.load_dataset

    def spy(*args, **kwargs):  # the real loader, recording whether it ran offline
        import huggingface_hub.constants as hc

        seen["offline"] = hc.is_offline_mode() and datasets.config.HF_HUB_OFFLINE
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    with pytest.raises(UserError) as err:
        tasks.load_samples(tasks.load_task("gsm8k"), tmp_path)
    assert seen["offline"] is True
    reason = "HF_HUB_OFFLINE is set" if how == "env" else "is unreachable"
    assert "has no data" in str(err.value) and reason in str(err.value) and "not in the datasets cache" in str(err.value)


def test_missing_model_fails_in_offline_mode(tmp_path, monkeypatch, no_hub):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(UserError, match=r"offline: huggingface.co:443 is unreachable .* not in the hub cache"):
        models._download("nobody/no-such-model")
