import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Generated data goes to a per-session cache, never the user's."""
    monkeypatch.setenv("LK_STUDY_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    yield


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    return torch.Generator().manual_seed(0)


def pytest_configure(config):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
