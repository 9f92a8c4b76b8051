"""Per-configuration simulation validation: the asset ``<g>/validation_report`` and its blocking check
``exit_wave_converged``.

The asset runs :func:`hrtem_dataset.validation.configuration_report` (the configuration's energy, sampling,
slice thickness and parametrization on a window of its structure 0: engines on the same atoms, convergence
with sampling / slices / phonons, Kirkland's Fig. 5.12, CTF zeros), writes the report to
``<workspace>/<name>/<version>/<config>/validation/`` and copies it into the published dataset folder when
that exists (the dataset card then links it and states its numbers; ``published_dataset`` copies it too).
The check passes when the exit wave at the configuration's settings is within the tolerance (the library's
:data:`~hrtem_dataset.validation.EXIT_WAVE_TOLERANCE`, 2 %, unless run config says otherwise) of the
converged run. Physics and tolerances live in the library; this module only wires them.

It depends on ``structure_specs`` only, so ``hrtem materialize`` (which runs the dataset's stages) does not
run it; materialize it from the UI or the job ``<g>_validation``.
"""

import dagster as dg
from pydantic import Field

from hrtem_dataset import validation as val
from hrtem_dataset.dataset.card import attach_validation_report
from hrtem_dataset.workspace import validation_dir

from .assets import DatasetConfigSource, code_versions
from .resources import PublishTarget, Workspace

ASSET = "validation_report"
CHECK = "exit_wave_converged"


class ValidationConfig(dg.Config):
    """Run config of ``validation_report``."""

    quick: bool = Field(False, description="shorter series (0.2–0.05 Å, 4–1 Å slices, ≤ 8 phonons)")
    tolerance: float = Field(val.EXIT_WAVE_TOLERANCE, gt=0, lt=1,
                             description="bound of the exit-wave check (relative L2 vs the converged run)")


def build_validation_assets(src: DatasetConfigSource) -> list[dg.AssetsDefinition]:
    """The ``validation_report`` asset (with its blocking check) of one configuration."""
    spec, g = src.spec, src.group
    key = dg.AssetKey([g, ASSET])

    @dg.asset(key=key, deps=[dg.AssetKey([g, "structure_specs"])], group_name=g, kinds={"python"},
           code_version=code_versions(spec)["exit_waves"],
           check_specs=[dg.AssetCheckSpec(CHECK, asset=key, blocking=True,
                                       description="exit wave at the configuration's sampling and slice thickness "
                                                   "within the tolerance (default "
                                                   f"{val.EXIT_WAVE_TOLERANCE:.0%}) of the converged run")],
           metadata={"config_path": dg.MetadataValue.path(str(src.path)), "dataset": spec.name,
                     "dataset_version": spec.version, "config_name": spec.config_name},
           description=f"Simulation validation of {spec.name}/{spec.config_name} on one of its scenes: engines, "
                       "convergence with sampling, slices and phonons, textbook values (validation.json, card, plots).")
    def validation_report(context: dg.AssetExecutionContext, config: ValidationConfig, workspace: Workspace,
                          publish_target: PublishTarget) -> dg.MaterializeResult:
        root = workspace.path()
        payload = val.configuration_report(spec, quick=config.quick, tolerance=config.tolerance,
                                           progress=context.log.info)
        folder = val.write_report(payload, validation_dir(spec, root))
        published = publish_target.folder(root, g) / "dataset"
        attached = attach_validation_report(folder, published, spec.config_name) if published.is_dir() else False
        s = val.summary(payload)
        chk = payload["checks"]["exit_wave_converged"]
        md = {"path": dg.MetadataValue.path(str(folder)), "card": dg.MetadataValue.md(val.render_card(payload)),
              "exit_wave_error": dg.MetadataValue.float(float(s["exit_wave_error"])),
              "image_error": dg.MetadataValue.float(float(s["image_error"])),
              "engines": dg.MetadataValue.json(s["engines"]), "seconds": dg.MetadataValue.float(payload["seconds"]["total"]),
              "attached_to_dataset": dg.MetadataValue.bool(attached)}
        return dg.MaterializeResult(metadata=md, check_results=[dg.AssetCheckResult(
            asset_key=key, check_name=CHECK, passed=bool(chk["passed"]), severity=dg.AssetCheckSeverity.ERROR,
            metadata={"value": dg.MetadataValue.float(float(chk["value"])),
                      "tolerance": dg.MetadataValue.float(float(chk["tolerance"])),
                      "description": dg.MetadataValue.text(
                          f"exit wave at {s['sampling']:g} Å / {s['slice_thickness']:g} Å slices vs converged "
                          f"({s['converged_sampling']:g} Å / {s['converged_slice_thickness']:g} Å): "
                          f"{100 * chk['value']:.2f} % (tolerance {100 * chk['tolerance']:.2f} %)")})])

    return [validation_report]


def validation_job(src: DatasetConfigSource):
    """``<g>_validation``: the configuration's validation report alone."""
    return dg.define_asset_job(f"{src.group}_validation", selection=[dg.AssetKey([src.group, ASSET])],
                            description=f"{src.spec.name}/{src.spec.config_name}: simulation validation report")
