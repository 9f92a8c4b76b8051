"""``hrtem_dataset.models``: the public API of the segmentation models under a name no ``models/`` folder in
a user's working directory can shadow (``import models`` resolves to the first ``models`` on ``sys.path``,
which is the working directory when Python runs a script or ``python -c`` from there).

Everything here is the top-level :mod:`models` package of this repository, re-exported::

    from hrtem_dataset.models import from_pretrained, segment
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent.parent / "models" / "__init__.py"


def _load_models():
    """The repository's ``models`` package, even when another ``models`` shadows it on ``sys.path``."""
    mod = sys.modules.get("models")
    if mod is not None and Path(getattr(mod, "__file__", "") or "").resolve() == _HERE:
        return mod
    spec = importlib.util.spec_from_file_location("models", _HERE, submodule_search_locations=[str(_HERE.parent)])
    if spec is None or spec.loader is None:  # pragma: no cover - broken installation
        raise ImportError(f"hrtem_dataset.models: cannot find {_HERE}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["models"] = mod  # its own relative imports and `from models.x import` inside the package
    spec.loader.exec_module(mod)
    return mod


_models = _load_models()

ModelConfig = _models.ModelConfig
build_model = _models.build_model
evaluate = _models.evaluate
evaluate_model = _models.evaluate_model
fine_tune = _models.fine_tune
from_pretrained = _models.from_pretrained
push_to_hub = _models.push_to_hub
save_pretrained = _models.save_pretrained
segment = _models.segment
train = _models.train
train_from_spec = _models.train_from_spec

__all__ = list(_models.__all__)
