"""Asset factory for studies (``configs/studies/*.yaml``): one asset group per study, keys ``<study>/<asset>``.

Graph of one study group ``s``::

    evaluation_sets → variant_datasets → trained_models (partitioned "variant|seed")
                                       → evaluation_matrix → study_report

The assets are thin wrappers of :mod:`hrtem_dataset.studies.steps`. Checks:
``variant_datasets/no_eval_structure_in_training`` (no structure of the simulated test set, compared by
species + positions hashes, in any variant's training set) and ``evaluation_matrix/identical_evaluation_sets``
(every model evaluated on exactly the same sets), both blocking.
"""


import json
import time
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    asset,
)

from hrtem_dataset import __version__, previews
from hrtem_dataset.settings import get_settings
from hrtem_dataset.studies import Study, load_study, parse_member_key
from hrtem_dataset.studies import steps as st
from hrtem_dataset.studies.report import plot_name, table

from .assets import Source, discover_sources, metadata_value, stats_metadata
from .resources import PublishTarget, SimulationEngine, Workspace

STUDY_ASSETS = ("evaluation_sets", "variant_datasets", "trained_models", "evaluation_matrix", "study_report")
STUDY_CHECKS = {"variant_datasets": ("no_eval_structure_in_training",),
                "evaluation_matrix": ("identical_evaluation_sets",)}


@dataclass(frozen=True)
class StudySource(Source):
    """A study YAML and the asset group built from it."""

    study: Study


def load_study_source(path: str | Path) -> StudySource:
    group, p = Source.locate(path)
    return StudySource(group, p, load_study(p))


def default_study_paths() -> list[Path]:
    env = get_settings().studies
    if env:
        return get_settings().paths(env)
    for cand in (Path.cwd() / "configs" / "studies", Path(__file__).resolve().parent.parent / "configs" / "studies"):
        if cand.is_dir():
            return [cand]
    return []


def discover_studies(paths: list[str | Path]) -> list[StudySource]:
    """Study specs from files and folders of ``*.yaml`` (see :func:`.assets.discover_sources`)."""
    return discover_sources(paths, load_study_source, "study", ("*.yaml",))


def study_code_version(study: Study) -> str:
    return f"{__version__}+{study.hash()}"


def build_study_assets(src: StudySource) -> list[AssetsDefinition]:
    """The assets of one study (group ``src.group``)."""
    study, g = src.study, src.group
    version = study_code_version(study)
    partitions = StaticPartitionsDefinition(study.partition_keys())
    meta = {"study_path": MetadataValue.path(str(src.path)), "study": study.name, "axis": study.spec.axis,
            "seeds": study.spec.seeds}

    def key(name: str) -> AssetKey:
        return AssetKey([g, name])

    def check_specs(name: str) -> list[AssetCheckSpec]:
        docs = {"no_eval_structure_in_training": "no structure of the simulated evaluation test split (species + "
                                                 "positions hash) in any variant's training set",
                "identical_evaluation_sets": "every model evaluated on the identical evaluation sets"}
        return [AssetCheckSpec(c, asset=key(name), description=docs[c], blocking=True)
                for c in STUDY_CHECKS.get(name, ())]

    @asset(key=key("evaluation_sets"), group_name=g, code_version=version, kinds={"python"}, metadata=meta,
           description=f"{study.name}: the simulated test set (built) and the real folders every model is "
                       "evaluated on; missing folders are skipped with a warning")
    def evaluation_sets(context: AssetExecutionContext, workspace: Workspace,
                        simulation: SimulationEngine) -> MaterializeResult:
        rec = st.prepare_evaluation(study, workspace.path(), engine=simulation.engine, device=simulation.device)
        for s in rec["skipped"]:
            context.log.warning(s["warning"])
        return MaterializeResult(metadata={
            "sets": MetadataValue.json([{k: s[k] for k in ("id", "kind", "hash")} for s in rec["sets"]]),
            "skipped": MetadataValue.json(rec["skipped"]), "dagster/row_count": MetadataValue.int(len(rec["sets"])),
            "waves_simulated": MetadataValue.int(rec["build"]["waves_simulated"]),
            "waves_reused": MetadataValue.int(rec["build"]["waves_reused"])})

    @asset(key=key("variant_datasets"), deps=[key("evaluation_sets")], group_name=g, code_version=version,
           kinds={"huggingface"}, check_specs=check_specs("variant_datasets"), metadata=meta,
           description=f"{study.name}: one dataset per distinct variant, sharing structures and exit waves "
                       "whose fingerprints agree (content-addressed store)")
    def variant_datasets(context: AssetExecutionContext, workspace: Workspace,
                         simulation: SimulationEngine) -> MaterializeResult:
        rec = st.build_variants(study, workspace.path(), engine=simulation.engine, device=simulation.device)
        lk = rec["leakage"]
        md = {**stats_metadata(rec["reuse"]), "datasets": MetadataValue.json(
            {k: {x: d[x] for x in ("config_name", "spec_hash", "waves_simulated", "waves_reused")}
             for k, d in rec["datasets"].items()}), "dagster/row_count": MetadataValue.int(len(rec["datasets"]))}
        return MaterializeResult(metadata=md, check_results=[AssetCheckResult(
            asset_key=key("variant_datasets"), check_name="no_eval_structure_in_training", passed=lk["passed"],
            metadata={"test_structures": MetadataValue.int(lk["test_structures"]),
                      "shared": MetadataValue.json(lk["shared"])})])

    @asset(key=key("trained_models"), deps=[key("variant_datasets")], partitions_def=partitions, group_name=g,
           code_version=version, kinds={"pytorch"}, metadata=meta,
           description=f"{study.name}: one U-Net per variant × seed (partition key 'variant|seed')")
    def trained_models(context: AssetExecutionContext, workspace: Workspace,
                       simulation: SimulationEngine) -> MaterializeResult:
        variant, seed = parse_member_key(context.partition_key)
        t0 = time.perf_counter()
        rec = st.train(study, variant, seed, workspace.path(), device=simulation.device)
        md = {"reused": MetadataValue.bool(bool(rec.get("reused"))), "seconds": metadata_value(time.perf_counter() - t0),
              "models": MetadataValue.json([x["path"] for x in rec["models"]])}
        if rec.get("skipped"):
            context.log.warning(f"{context.partition_key}: {rec['skipped']}")
            md["skipped"] = MetadataValue.text(rec["skipped"])
        if rec["models"]:
            md.update({f"val_{k}": metadata_value(float(v)) for k, v in rec["models"][0]["metrics"].items()
                       if k in ("f1", "iou") and v is not None})
        return MaterializeResult(metadata=md)

    @asset(key=key("evaluation_matrix"), deps=[key("trained_models")], group_name=g, code_version=version,
           kinds={"pytorch"}, check_specs=check_specs("evaluation_matrix"), metadata=meta,
           description=f"{study.name}: every model on every evaluation set")
    def evaluation_matrix(context: AssetExecutionContext, workspace: Workspace,
                          simulation: SimulationEngine) -> MaterializeResult:
        rec = st.evaluate_all(study, workspace.path(), device=simulation.device)
        chk = rec["identical_sets"]
        return MaterializeResult(
            metadata={"shape": MetadataValue.json(rec["shape"]), "dagster/row_count": MetadataValue.int(len(rec["matrix"])),
                      "skipped_models": MetadataValue.json(rec["skipped_models"])},
            check_results=[AssetCheckResult(asset_key=key("evaluation_matrix"), check_name="identical_evaluation_sets",
                                            passed=chk["passed"], metadata={"sets": MetadataValue.json(chk["sets"]),
                                                                            "mismatched": MetadataValue.json(chk["mismatched"])})])

    @asset(key=key("study_report"), deps=[key("evaluation_matrix")], group_name=g, code_version=version,
           kinds={"huggingface"}, metadata=meta,
           description=f"{study.name}: study.json, the study card (README.md) and plots, a folder publishable "
                       "like a Hub dataset")
    def study_report(context: AssetExecutionContext, workspace: Workspace,
                     publish_target: PublishTarget) -> MaterializeResult:
        root = workspace.path()
        dest = publish_target.folder(root, g) / "study"
        res = st.report(study, dest, root)
        p = res["payload"]
        md_text = table(p) + "\n\n" + previews.markdown_images(
            {f"{p['metric']} on {sid}": png for sid, png in res["pngs"].items()})
        return MaterializeResult(metadata={
            "preview": MetadataValue.md(md_text), "path": MetadataValue.path(str(dest)),
            "waves_simulated": MetadataValue.int(p["reuse"]["waves_simulated"]),
            "waves_reused": MetadataValue.int(p["reuse"]["waves_reused"]),
            "warnings": MetadataValue.json(p["warnings"]),
            "plots": MetadataValue.json([str(dest / "plots" / plot_name(s["id"])) for s in p["evaluation_sets"]]),
            "study_json": MetadataValue.path(str(dest / "study.json"))})

    return [evaluation_sets, variant_datasets, trained_models, evaluation_matrix, study_report]


def describe(src: StudySource) -> str:
    return json.dumps({"group": src.group, "path": str(src.path), "study": src.study.name,
                       "variants": [v.name for v in src.study.variants], "seeds": src.study.spec.seeds})
