"""Studies: sets of models trained on variants of a dataset configuration, evaluated on identical sets.

- :mod:`.spec` — the study YAML (:class:`StudySpec`) and :func:`load_study` (resolved :class:`Study`);
- :mod:`.build` — variant datasets sharing structures/exit waves through a content-addressed store,
  structure hashes for the leakage check, real folders and transfer folds;
- :mod:`.members` — training (``models.train.train``) and evaluation (``models.evaluate.evaluate``) of
  every variant × seed, cached and resumable;
- :mod:`.steps` — one function per Dagster asset;
- :mod:`.report` — study.json, the study card and plots.

No Dagster imports here (``dagster_project/studies.py`` wraps the steps as assets).
"""

from .report import render_report, write_report
from .spec import Study, StudySpec, load_study, member_key, parse_member_key

__all__ = ["Study", "StudySpec", "load_study", "member_key", "parse_member_key", "render_report", "write_report"]
