"""Thin Dagster shell around :mod:`hrtem_dataset.pipeline`: ``dagster dev -m dagster_project``."""

from .definitions import build_definitions, defs

__all__ = ["build_definitions", "defs"]
