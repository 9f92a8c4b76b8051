"""``hrtem structures build|sample``: concrete scenes as extxyz files (atomic writes, no partial output)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..seeding import check_seed
from .options import quiet_option

structures_app = typer.Typer(help="Build nanoparticle-on-carbon scenes (extxyz).", no_args_is_help=True)


MAX_SCENES = 1_000_000  # scenes per `structures sample` (a typo like 2^70 must not run forever)


@structures_app.command("build")
def build_command(
    spec_path: Path = typer.Argument(..., metavar="SPEC.yaml", help="scene spec (SceneSpec YAML: cell, substrate, particles)"),
    seed: int = typer.Option(0, "--seed", help="seed of the scene (substrate, defects, orientations)"),
    out: Path = typer.Option(..., "--out", help="output extxyz file"),
    prismatic: Path | None = typer.Option(None, "--prismatic", help="also write the Prismatic XYZ file here"),
    quiet: bool = quiet_option(),  # noqa: ARG001 - one scene: nothing on stderr but errors
) -> None:
    """Build one concrete scene from a scene spec and write it as extxyz."""
    from ..io import atomic_path, check_output_file
    from ..specs import SceneSpec, load_spec
    from ..structures import build_scene, write_extxyz, write_prismatic_xyz

    check_output_file(out)
    if prismatic is not None:
        check_output_file(prismatic, "--prismatic")
    spec = load_spec(spec_path, SceneSpec)
    atoms = build_scene(spec, check_seed(seed))
    if prismatic is not None:  # both files or neither
        with atomic_path(out) as tmp_out, atomic_path(prismatic) as tmp_pr:
            write_extxyz(atoms, tmp_out)
            write_prismatic_xyz(atoms, tmp_pr)
    else:
        write_extxyz(atoms, out)
    info = atoms.info["scene"]
    typer.echo(json.dumps({"out": str(out), "n_atoms": len(atoms), "n_particles": info["n_particles"],
                           "cell": info["cell"]}))


@structures_app.command("sample")
def sample_command(
    dist_path: Path = typer.Argument(..., metavar="DIST.yaml",
                                     help="structure distribution spec (or a dataset config: its `structures`)"),
    n: int = typer.Option(..., "--n", help="number of scenes"),
    seed: int = typer.Option(0, "--seed", help="root seed; scene i uses derive_seed(seed, 'structure', i)"),
    out: Path = typer.Option(..., "--out", help="output directory (replaced atomically)"),
    quiet: bool = quiet_option(),
) -> None:
    """Draw N scenes from a distribution: DIR/scene-NNNNN.extxyz and DIR/manifest.jsonl."""
    from ..errors import InputError
    from ..io import atomic_dir, check_output_dir
    from ..specs import DatasetSpec, StructureDistributionSpec, read_yaml, validate_spec
    from ..structures import sample_scene, write_extxyz

    data = read_yaml(dist_path)
    if isinstance(data, dict) and "structures" in data and "name" in data:
        dist = validate_spec(data, DatasetSpec, str(dist_path)).structures
    else:
        dist = validate_spec(data, StructureDistributionSpec, str(dist_path))
    if not 1 <= n <= MAX_SCENES:
        raise InputError(f"--n: must be in 1..{MAX_SCENES:,}, got {n}")
    check_output_dir(out, allowed=("manifest.jsonl", "scene-*.extxyz"))
    check_seed(seed)
    from .. import progress

    progress.set_enabled(not quiet)
    lines = []
    with atomic_dir(out) as tmp, progress.bar(n, desc="scenes", disable=quiet) as scenes:
        for i in range(n):
            s, spec, dropped, atoms = sample_scene(dist, seed, i)
            name = f"scene-{i:05d}.extxyz"
            write_extxyz(atoms, tmp / name)
            lines.append(json.dumps({"index": i, "seed": s, "file": name, "n_atoms": len(atoms),
                                     "n_particles": len(spec.particles), "n_particles_dropped": dropped,
                                     "scene": atoms.info["scene"]},
                                    sort_keys=True))
            scenes.update(1)
        (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    typer.echo(json.dumps({"out": str(out), "n": n, "seed": seed}))


def register(app: typer.Typer) -> None:
    app.add_typer(structures_app, name="structures")
