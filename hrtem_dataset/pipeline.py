"""The per-shard stage functions and workspace paths in one namespace (``from hrtem_dataset import pipeline
as pl``), for scripts, benchmarks and tests that drive the pipeline by hand.

Nothing is defined here: each name lives in the stage module that owns it (:mod:`hrtem_dataset.stages`:
run, format, summary, checks and tolerances of one stage per module) or in :mod:`hrtem_dataset.workspace`
(paths, ids, fingerprints). The model stages (``train_model``, ``evaluate``, ``publish_model``) are in
:mod:`models.stage`: the dataset library does not import the models.
"""

from .labels import VACUUM_MARGIN, vacuum_region
from .stages import (
    assemble_dataset,
    build_structures_shard,
    expected_rows,
    expected_rows_per_structure,
    image_shard,
    images_summary,
    load_waves,
    plan_structures,
    publish_dataset,
    read_image_shard,
    read_image_shard_rows,
    read_structure,
    read_structure_specs,
    scene_spec_for,
    simulate_shard,
    waves_summary,
)
from .stages.dataset import dataset_rows
from .workspace import (
    SPLITS,
    claim_stage_dir,
    config_dir,
    dataset_dir,
    fingerprints,
    images_fingerprint,
    images_path,
    sample_id,
    shard_indices,
    simulation_settings,
    structure_id,
    structure_path,
    waves_path,
)

__all__ = [
    "SPLITS", "VACUUM_MARGIN", "assemble_dataset", "build_structures_shard", "claim_stage_dir", "config_dir",
    "dataset_dir", "dataset_rows", "expected_rows", "expected_rows_per_structure", "fingerprints",
    "image_shard", "images_fingerprint", "images_path", "images_summary", "load_waves", "plan_structures",
    "publish_dataset", "read_image_shard", "read_image_shard_rows", "read_structure", "read_structure_specs",
    "sample_id", "scene_spec_for", "shard_indices", "simulate_shard", "simulation_settings", "structure_id",
    "structure_path", "vacuum_region", "waves_path", "waves_summary",
]
