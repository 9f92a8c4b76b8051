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
