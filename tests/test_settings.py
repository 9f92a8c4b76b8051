"""The settings object: the environment is read once per distinct environment (hrtem_dataset/settings.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hrtem_dataset.errors import InputError
from hrtem_dataset.settings import get_settings


def test_unchanged_environment_returns_the_cached_settings(monkeypatch):
    monkeypatch.setenv("HRTEM_DASK_WORKERS", "3")
    first = get_settings()
    assert first.dask_workers == 3
    monkeypatch.setenv("UNRELATED_VARIABLE_OF_THE_TEST", "x")  # not read by the settings: same object
    assert get_settings() is first


def test_changed_variable_is_seen(monkeypatch, tmp_path):
    monkeypatch.setenv("HRTEM_HOME", str(tmp_path / "a"))
    first = get_settings()
    monkeypatch.setenv("HRTEM_HOME", str(tmp_path / "b"))
    second = get_settings()
    assert second is not first and second.home == tmp_path / "b"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert get_settings().offline and get_settings().home == tmp_path / "b"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    assert not get_settings().offline
    monkeypatch.setenv("HRTEM_HOME", str(tmp_path / "a"))
    assert get_settings().home == tmp_path / "a"


def test_malformed_variable_raises_every_time(monkeypatch):
    monkeypatch.setenv("HRTEM_DASK_WORKERS", "many")
    for _ in range(2):
        with pytest.raises(InputError, match="HRTEM_DASK_WORKERS"):
            get_settings()
    monkeypatch.setenv("HRTEM_DASK_WORKERS", "4")
    assert get_settings().dask_workers == 4


def test_settings_are_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        get_settings().executor = "in_process"
