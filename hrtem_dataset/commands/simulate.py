"""``hrtem simulate scene.extxyz --out waves.npz``: exit waves of the full scene and of the particles alone.

The npz (written atomically) holds ``scene`` complex64 (P, nx, ny) (P = max(phonons, 1)), ``particles``
complex64 (nx, ny), ``sampling`` (2,) Å, ``energy`` eV, ``gpts``, ``cell`` and ``settings`` (a JSON
string with every setting, the engine version and the scene's own metadata when present).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .options import Engine, device_option, quiet_option


def _read_scene(path: Path):
    from ..errors import InputError

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        from ..structures import read_extxyz
    except ImportError:  # pragma: no cover - structures module absent
        read_extxyz = None
    try:
        if read_extxyz is not None:
            atoms = read_extxyz(path)
        else:  # pragma: no cover
            import ase.io

            atoms = ase.io.read(path, format="extxyz")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise InputError(f"{path}: cannot read extxyz: {' '.join(str(exc).split())}") from None
    if "particle_id" not in atoms.arrays:
        raise InputError(f"{path}: missing per-atom array 'particle_id'")
    import numpy as np

    from ..simulation.core import _check_atoms

    lengths = _check_atoms(atoms, str(path))  # orthorhombic, cell lengths > 0, finite positions
    if len(atoms) == 0:
        raise InputError(f"{path}: the scene has no atoms")
    margin = np.maximum(2.0, 0.05 * lengths)  # Å; a scene from `hrtem structures build` lies inside its cell
    outside = np.flatnonzero(np.any((atoms.positions < -margin) | (atoms.positions > lengths + margin), axis=1))
    if outside.size:
        i = int(outside[0])
        raise InputError(f"{path}: {outside.size} atom(s) far outside the cell {lengths.round(3).tolist()} Å "
                         f"(e.g. atom {i} at {atoms.positions[i].round(3).tolist()} Å)")
    return atoms


def simulate_command(
    scene: Path = typer.Argument(..., metavar="scene.extxyz", help="scene written by `hrtem structures build`"),
    out: Path = typer.Option(..., "--out", help="output .npz file"),
    engine: Engine = typer.Option(Engine.torch, "--engine", help="multislice engine"),
    energy: float = typer.Option(300e3, "--energy", help="beam energy, eV"),
    sampling: float = typer.Option(0.1, "--sampling", help="real-space sampling, Å"),
    slice_thickness: float = typer.Option(2.0, "--slice-thickness", help="slice thickness, Å"),
    phonons: int = typer.Option(0, "--phonons", help="frozen-phonon configurations (0 = static lattice)"),
    parametrization: str = typer.Option("lobato", "--parametrization", help="lobato | kirkland"),
    device: str = device_option(simulation=True),
    seed: int = typer.Option(0, "--seed", help="seed of the frozen-phonon displacements"),
    antialias_transmission: bool | None = typer.Option(
        None, "--antialias-transmission/--no-antialias-transmission",
        help="band-limit each slice's transmission function (abTEM's scheme) or not (Prismatic's); default: the "
        "engine's own (torch: not)"),
    quiet: bool = quiet_option(),
) -> None:
    """Simulate the exit waves of a scene and of its particles alone (for labels); progress per stage on
    stderr, one JSON line on stdout."""
    from .. import progress

    progress.set_enabled(not quiet)
    with progress.display():
        _simulate(scene, out, engine.value, energy, sampling, slice_thickness, phonons, parametrization, device,
                  seed, antialias_transmission)


def _simulate(scene: Path, out: Path, engine: str, energy: float, sampling: float, slice_thickness: float,
              phonons: int, parametrization: str, device: str, seed: int,
              antialias_transmission: bool | None = None) -> None:
    import numpy as np
    from pydantic import ValidationError

    from ..errors import InputError, format_validation_error
    from ..io import atomic_path, check_output_file
    from ..seeding import check_seed
    from ..simulation import simulate_scene
    from ..specs import SimulationSpec

    check_seed(seed)
    check_output_file(out)
    try:
        spec = SimulationSpec(engine=engine, energy=energy, sampling=sampling, slice_thickness=slice_thickness,
                              parametrization=parametrization, phonons=phonons, device=device,
                              antialias_transmission=antialias_transmission)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, "simulate")) from None
    from .. import progress

    with progress.stage(f"reading {scene.name}"):
        atoms = _read_scene(scene)
    n_waves = max(spec.phonons, 1) + 1
    with progress.stage(f"multislice: {len(atoms)} atoms, {n_waves} waves ({spec.engine}, {spec.device})"):
        result = simulate_scene(atoms, spec, seed)
    settings = {k: v for k, v in result.items() if k not in ("scene", "particles")}
    settings.update(spec=spec.model_dump(mode="json"), source=str(scene), n_atoms=len(atoms),
                    scene=atoms.info.get("scene"))
    with progress.stage(f"writing {out.name}"), atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, scene=result["scene"], particles=result["particles"],
                 sampling=np.asarray(result["sampling"], dtype=np.float64),
                 energy=np.float64(result["energy"]), gpts=np.asarray(result["gpts"], dtype=np.int64),
                 cell=np.asarray(result["cell"], dtype=np.float64),
                 settings=np.asarray(json.dumps(settings, sort_keys=True, default=str)))
    typer.echo(json.dumps({"out": str(out), "engine": result["engine"], "gpts": list(result["gpts"]),
                           "phonons": spec.phonons, "sampling": list(result["sampling"])}))


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_command)
