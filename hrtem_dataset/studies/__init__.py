"""Studies: sets of models trained on variants of a dataset configuration, evaluated on identical sets.

- :mod:`.spec` — the study YAML (:class:`StudySpec`) and :func:`load_study` (resolved :class:`Study`);
- :mod:`.build` — variant datasets sharing structures/exit waves through a content-addressed store,
  structure hashes for the leakage check, real folders and transfer folds;
- :mod:`.members` — training (``models.train.train``) and evaluation (``models.evaluate.evaluate``) of
  every variant × seed, cached and resumable;
- :mod:`.steps` — one function per Dagster asset;
- :mod:`.report` — study.json, the study card and plots.

Layer: studies are an application of the library, above :mod:`models` (the layers contract in
``pyproject.toml``: cli > commands > dagster_project > hrtem_dataset.studies > models > hrtem_dataset.stages).
A study trains and evaluates models on datasets the stages build, so it imports :mod:`models` at module
level; the dataset library below it (stages down to errors) imports neither :mod:`models` nor Dagster, and
:mod:`models` imports no study (forbidden contracts, checked by ``tests/test_architecture.py``). No Dagster
imports here either (``dagster_project/studies.py`` wraps the steps as assets).
"""

from .report import render_report, write_report
from .spec import Study, StudySpec, load_study, member_key, parse_member_key

__all__ = ["Study", "StudySpec", "load_study", "member_key", "parse_member_key", "render_report", "write_report"]
