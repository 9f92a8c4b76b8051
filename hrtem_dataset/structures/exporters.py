"""Scene files: extended XYZ (ASE) and the Prismatic XYZ format. All writes are atomic.

extxyz: positions, species, cell, pbc, the per-atom int array ``particle_id`` and ``info["scene"]``
(stored as one JSON string in the comment line, parsed back by :func:`read_extxyz`). Bytes are
deterministic: same atoms -> same file.

Prismatic XYZ (``.xyz`` as read by Prismatic/pyprismatic): a comment line, the cell ``Lx Ly Lz`` (Å),
one line per atom ``Z x y z occupancy thermal_sigma`` (Å; thermal_sigma = RMS displacement along one
axis, as Prismatic expects), and a final line ``-1``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from ase import Atoms

from ..errors import InputError
from ..io import atomic_path
from .thermal import default_rms_displacement


def write_extxyz(atoms: Atoms, path) -> Path:
    """Write ``atoms`` (with ``particle_id`` and ``info["scene"]``) as extxyz, atomically."""
    from ase.io import write

    out = atoms.copy()
    out.info = {}
    if "scene" in atoms.info:
        out.info["scene"] = json.dumps(atoms.info["scene"], sort_keys=True, separators=(",", ":"))
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        write(fh, out, format="extxyz")
    return path


def read_extxyz(path) -> Atoms:
    """Read a scene written by :func:`write_extxyz` (``particle_id`` as int array, ``info["scene"]`` a dict)."""
    from ase.io import read

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        atoms = read(p, format="extxyz")
    except Exception as exc:  # noqa: BLE001 - any parse failure is bad input
        raise InputError(f"{p}: not a readable extxyz file ({type(exc).__name__})") from None
    scene = atoms.info.get("scene")
    if isinstance(scene, str):
        try:
            atoms.info["scene"] = json.loads(scene)
        except json.JSONDecodeError:
            raise InputError(f"{p}: malformed scene metadata") from None
    if "particle_id" in atoms.arrays:
        atoms.arrays["particle_id"] = atoms.arrays["particle_id"].astype(np.int32)
    else:
        atoms.set_array("particle_id", np.full(len(atoms), -1, dtype=np.int32))
    return atoms


def write_prismatic_xyz(atoms: Atoms, path, thermal_sigma: dict[str, float] | None = None,
                        comment: str = "hrtem-dataset scene") -> Path:
    """Write the Prismatic XYZ format (see module docstring), atomically.

    ``thermal_sigma`` maps element symbols to RMS displacements (Å); missing elements use the simulation
    project's Debye–Waller defaults (:mod:`.thermal`).
    """
    syms = atoms.get_chemical_symbols()
    uniq = sorted(set(syms))
    table = {s: float((thermal_sigma or {}).get(s, default_rms_displacement(s))) for s in uniq}
    sig = np.array([table[s] for s in syms])
    pos = atoms.get_positions()
    pos = np.mod(pos, atoms.cell.lengths())  # Prismatic expects atoms inside the cell
    lx, ly, lz = atoms.cell.lengths()
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(" ".join(comment.split()) + "\n")
        fh.write(f"    {lx:.6f} {ly:.6f} {lz:.6f}\n")
        np.savetxt(fh, np.column_stack([atoms.numbers, pos, np.ones(len(atoms)), sig]),
                   fmt=["%d", "%.6f", "%.6f", "%.6f", "%.1f", "%.5f"])
        fh.write("-1\n")
    return path
