"""Behaviour guard of the architecture refactor (issue 10): the tiny configuration of the pipeline tests,
built stage by stage and trained for 3 steps, must give byte-identical parquet files and model weights to
those recorded before the stage modules replaced ``hrtem_dataset/pipeline.py``.

The digests were recorded on the project's CPU environment (torch CPU kernels, pyarrow writer); a change of
those libraries may change them too — re-record only after checking the change is theirs, not ours."""

from __future__ import annotations

import hashlib

from dagster_helpers import isolated_hf_datasets_cache, tiny_spec_dict  # noqa: F401 (autouse fixture)

from hrtem_dataset import pipeline as pl
from hrtem_dataset.specs import DatasetSpec

PARQUET_SHA256 = {
    "data/tiny/test-00000-of-00001.parquet": "9d720eec861452120e153b1d17557caadd8bae49698fe3e3c9fe83c7867628ec",
    "data/tiny/train-00000-of-00001.parquet": "566c5e24eed462f86308969a7564d969a25d617f0651876dcb728c2dd6832b46",
    "data/tiny/validation-00000-of-00001.parquet": "05ec5bb59599b42196a50fcbcaa157fecf7cfec2883860c0fee4a5314deefaf1",
}
MODEL_SHA256 = "03fe1ca88cc105ca96bbba593961870d80ccf774d447a4c4e2fbce7e91027254"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_and_train(root) -> tuple[dict[str, str], str]:
    """Digests of the dataset's parquet files (by path in the folder) and of the trained model.safetensors."""
    spec = DatasetSpec.model_validate(tiny_spec_dict(model=True))
    pl.plan_structures(spec, root)
    for shard in range(spec.n_shards):
        pl.build_structures_shard(spec, shard, root)
        pl.simulate_shard(spec, shard, root)
        pl.image_shard(spec, shard, root)
    folder = pl.dataset_dir(spec, root)
    pl.assemble_dataset(spec, root)
    model = pl.train_model(spec, root, device="cpu")
    parquet = {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob("*.parquet"))}
    return parquet, _sha(pl.config_dir(spec, root) / "model" / "model.safetensors") if model else ""


def test_same_spec_same_bytes_as_before_the_refactor(tmp_path):
    parquet, model = build_and_train(tmp_path)
    assert parquet == PARQUET_SHA256
    assert model == MODEL_SHA256
