import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAS_ABTEM = importlib.util.find_spec("abtem") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "abtem: needs the optional abTEM extra (pip install -e '.[abtem]'); "
                                       "only these tests skip without it")


def pytest_runtest_setup(item):
    # only the marked tests skip, and only when abTEM is not installed at all: an installed but broken
    # abTEM fails at import instead of hiding the tests
    if item.get_closest_marker("abtem") is not None and not HAS_ABTEM:
        pytest.skip("abTEM is not installed (optional extra)")


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves the process environment as it found it, including changes a library makes behind
    monkeypatch's back: distributed's Nanny sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
    ``OPENBLAS_NUM_THREADS`` to 1 in this process's environment when it spawns its workers (the Dask executor
    tests), so every subprocess a later test starts ran single-threaded (the images stage of a benchmark child
    took 1 worker instead of one per core)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
