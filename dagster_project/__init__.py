"""Thin Dagster shell around the stage objects (:mod:`hrtem_dataset.stages`, :mod:`models.stage`): ``dagster dev -m dagster_project``."""

from .definitions import build_definitions, defs

__all__ = ["build_definitions", "defs"]
