"""The dataset pipeline as stage modules, one per stage, each owning its run, format, summary and checks.

Data flows one way — spec → structures → exit waves → imaged samples → dataset folder (→ model, in
:mod:`models.stage`) — and every stage reads only the spec and the output of the stage before it. A *shard*
is a block of ``spec.shard_size`` consecutive structures (``spec.shard_indices(shard)``); it is the unit of
parallel work (one Dagster partition). Where each stage writes, and the fingerprints that say whether what
is there was built from the same spec, come from :mod:`hrtem_dataset.workspace`.

=========================  ===========================================  ==========================================
module                     run (one shard / the configuration)          checks (tolerances in the module)
=========================  ===========================================  ==========================================
:mod:`.structures`         ``plan_structures``, ``build_structures_shard``  ``atoms_valid``
:mod:`.exit_waves`         ``simulate_shard``                           ``no_nan_inf``, ``vacuum_intensity``
:mod:`.images`             ``image_shard``                              ``no_nan_inf``, ``mean_intensity``, ``label_coverage``
:mod:`.dataset`            ``assemble_dataset``, ``publish_dataset``    ``no_split_leakage``, ``row_counts_match_spec``
:mod:`models.stage`        ``train_model``, ``evaluate``, ``publish_model``  ``metric_above_floor``
=========================  ===========================================  ==========================================

Resumable and atomic: every file is written through :func:`hrtem_dataset.io.atomic_path` (temporary name,
renamed on success), so a file that exists is complete, and each stage skips the outputs that already
exist. A stage directory built from a different spec (its fingerprint differs) is never mixed with new
outputs: the stage raises :class:`~hrtem_dataset.errors.InputError` naming the directory.

Seeds come from the spec only (:func:`hrtem_dataset.seeding.derive_seed`): structure ``i`` uses
``derive_seed(seed, "structure", i)``, its exit waves ``derive_seed(seed, "simulation", i)``, its imaging
conditions ``derive_seed(seed, "imaging", i)``. The same spec gives the same bytes, whatever the shard
order, process or machine. Every run function returns a small JSON-able stats dict (counts, timings,
throughput); :data:`DATASET_STAGES` are the :class:`~.base.Stage` objects the orchestrators loop over.
"""

from .base import CheckOutcome, CheckSpec, PublishOptions, RunContext, Stage, StageFailure, StageResult
from .dataset import (
    DatasetSplitsStage,
    PublishedDatasetStage,
    assemble_dataset,
    expected_rows,
    publish_dataset,
)
from .exit_waves import ExitWavesStage, load_waves, simulate_shard, waves_summary
from .images import (
    ImagedSamplesStage,
    expected_rows_per_structure,
    image_shard,
    images_summary,
    read_image_shard,
    read_image_shard_rows,
)
from .structures import (
    StructureSpecsStage,
    StructuresStage,
    build_structures_shard,
    plan_structures,
    read_structure,
    read_structure_specs,
    scene_spec_for,
)

DATASET_STAGES = (StructureSpecsStage(), StructuresStage(), ExitWavesStage(), ImagedSamplesStage(),
                  DatasetSplitsStage(), PublishedDatasetStage())
"""The stages of a dataset configuration, in dependency order (the model stages: :data:`models.stage.MODEL_STAGES`)."""

__all__ = [
    "DATASET_STAGES",
    "CheckOutcome",
    "CheckSpec",
    "PublishOptions",
    "RunContext",
    "Stage",
    "StageFailure",
    "StageResult",
    "assemble_dataset",
    "build_structures_shard",
    "expected_rows",
    "expected_rows_per_structure",
    "image_shard",
    "images_summary",
    "load_waves",
    "plan_structures",
    "publish_dataset",
    "read_image_shard",
    "read_image_shard_rows",
    "read_structure",
    "read_structure_specs",
    "scene_spec_for",
    "simulate_shard",
    "waves_summary",
]
