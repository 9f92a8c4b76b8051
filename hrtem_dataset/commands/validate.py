"""``hrtem validate [SCENE | --reference | --config CONFIG.yaml] --out DIR``: the physics validation report.

Writes ``DIR/validation.json``, ``DIR/README.md`` (a card) and ``DIR/plots/*.png`` (all or nothing):
torch vs abTEM vs Prismatic (whichever are installed) on the same atoms, convergence of exit wave and image
with sampling and slice thickness, the frozen-phonon average, Kirkland's Fig. 5.12 and CTF zeros vs
Scherzer's formula (see :mod:`hrtem_dataset.validation`). One JSON line on stdout: the checks and timing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from .options import quiet_option

ALLOWED = ("validation.json", "README.md", "plots")


def validate_command(
    scene: Path | None = typer.Argument(None, metavar="[SCENE]",
                                        help="scene (.extxyz from `hrtem structures build`) to validate on"),
    out: Path = typer.Option(..., "--out", help="output folder (new, empty, or a previous report)"),
    reference: bool = typer.Option(False, "--reference", help="the reference report: a-C + Au scene and Au cube"),
    config: Path | None = typer.Option(None, "--config", help="a dataset configuration YAML: its settings on a "
                                       "window of one of its own scenes"),
    quick: bool = typer.Option(False, "--quick", help="shorter series (0.2–0.05 Å, 4–1 Å slices, ≤ 8 phonons)"),
    tolerance: float = typer.Option(0.02, "--tolerance", help="bound of the exit-wave convergence check "
                                    "(relative L2 vs the converged run)"),
    energy: float = typer.Option(300e3, "--energy", help="SCENE only: beam energy, eV"),
    sampling: float = typer.Option(0.1, "--sampling", help="SCENE only: sampling, Å"),
    slice_thickness: float = typer.Option(2.0, "--slice-thickness", help="SCENE only: slice thickness, Å"),
    parametrization: str = typer.Option("lobato", "--parametrization", help="SCENE only: lobato | kirkland"),
    quiet: bool = quiet_option(),
) -> None:
    """Validate the simulation physics and write the report (validation.json, README.md, plots/)."""
    from .. import progress

    progress.set_enabled(not quiet)
    with progress.display():
        _validate(scene, out, reference, config, quick, tolerance, energy, sampling, slice_thickness,
                  parametrization)


def _validate(scene, out, reference, config, quick, tolerance, energy, sampling, slice_thickness,
              parametrization) -> None:
    from pydantic import ValidationError

    from .. import progress
    from ..errors import InputError, format_validation_error
    from ..io import check_output_folder
    from ..specs import SimulationSpec
    from ..validation import report as rp

    chosen = [name for name, v in (("SCENE", scene), ("--reference", reference), ("--config", config)) if v]
    if len(chosen) != 1:
        raise InputError("validate: give exactly one of SCENE, --reference or --config"
                         + (f" (got {', '.join(chosen)})" if chosen else ""))
    if not (math.isfinite(tolerance) and 0 < tolerance < 1):
        raise InputError(f"--tolerance: must be in (0, 1), got {tolerance}")
    check_output_folder(out, ALLOWED)

    def note(name: str) -> None:
        progress.note(f"validate: {name}")

    if reference:
        payload = rp.reference_report(quick=quick, tolerance=tolerance, progress=note)
    elif config is not None:
        from ..specs import DatasetSpec, load_spec

        if not config.is_file():
            raise InputError(f"{config}: file not found")
        spec = load_spec(config, DatasetSpec)
        payload = rp.configuration_report(spec, quick=quick, tolerance=tolerance, progress=note)
    else:
        from .simulate import _read_scene

        try:
            SimulationSpec(energy=energy, sampling=sampling, slice_thickness=slice_thickness,
                           parametrization=parametrization, phonons=0)
        except ValidationError as exc:
            raise InputError(format_validation_error(exc, "validate")) from None
        atoms = _read_scene(scene)
        settings = {"energy": energy, "sampling": sampling, "slice_thickness": slice_thickness,
                    "parametrization": parametrization, "phonons": 0}
        payload = rp.scene_report(atoms, scene.name, settings, quick=quick, tolerance=tolerance, progress=note)
    rp.write_report(payload, out)
    checks = {k: bool(v["passed"]) for k, v in payload["checks"].items()}
    typer.echo(json.dumps({"out": str(out), "kind": payload["kind"], "checks": checks,
                           "exit_wave_error": payload["settings_error"]["exit_wave"],
                           "seconds": round(payload["seconds"]["total"], 1)}))


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
