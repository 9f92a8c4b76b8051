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
from ase.data import atomic_numbers

from ..errors import InputError
from ..io import atomic_path
from .thermal import default_rms_displacement


_COLUMNS = ["symbols", "positions", "particle_id"]
_PROPERTIES = "species:S:1:pos:R:3:particle_id:I:1"


def write_extxyz(atoms: Atoms, path) -> Path:
    """Write ``atoms`` (with ``particle_id`` and ``info["scene"]``) as extxyz, atomically.

    Scenes (species, positions, an int ``particle_id``, nothing else) get ASE's own header and line format
    (``ase.io.extxyz.output_column_format``) with the atom lines formatted in one pass: the same bytes as
    ``ase.io.write(..., format="extxyz")`` (checked in tests/test_structures.py), ≈ 5× faster on 10⁴-atom
    scenes. Anything else goes through ASE's writer."""
    from ase.io import write
    from ase.io.extxyz import output_column_format

    out = atoms.copy()
    out.info = {}
    if "scene" in atoms.info:
        out.info["scene"] = json.dumps(atoms.info["scene"], sort_keys=True, separators=(",", ":"))
    path = Path(path)
    pid = out.arrays.get("particle_id")
    fast = (set(out.arrays) == {"numbers", "positions", "particle_id"} and pid is not None
            and pid.dtype.kind == "i" and out.constraints == [] and out.calc is None)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        if not fast:
            write(fh, out, format="extxyz")
            return path
        symbols = out.get_chemical_symbols()
        arrays = {"symbols": np.array(symbols), "positions": out.positions, "particle_id": pid}
        comment, _, _, fmt = output_column_format(out, list(_COLUMNS), arrays, True)
        pos = out.positions.tolist()
        fh.write(f"{len(out)}\n{comment}\n")
        fh.write("".join([fmt % (sym, x, y, z, p)
                          for sym, (x, y, z), p in zip(symbols, pos, pid.tolist(), strict=True)]))
    return path


def _read_scene_fast(p: Path) -> Atoms | None:
    """The scenes :func:`write_extxyz` writes (one frame, ``Properties`` species/pos/particle_id, Lattice and
    pbc keys), parsed with numpy: the same Atoms as ``ase.io.read`` (numbers, positions, cell and pbc bit for
    bit, checked in tests/test_structures.py), ≈ 5× faster. ``None`` for anything else (ASE reads it)."""
    from ase.io.extxyz import key_val_str_to_dict

    with open(p) as fh:
        first = fh.readline()
        header = fh.readline()
        body = fh.read()
    try:
        n = int(first.strip())
        info = key_val_str_to_dict(header)
    except Exception:  # noqa: BLE001 - not ours: ASE reports the problem
        return None
    if info.get("Properties") != _PROPERTIES or "Lattice" not in info or set(info) - {"Lattice", "Properties",
                                                                                      "pbc", "scene"}:
        return None
    tokens = body.split()
    if len(tokens) != 5 * n:
        return None  # more frames or a damaged file: ASE decides
    try:  # float() is ASE's parse too (correctly rounded): the same doubles
        positions = np.array([list(map(float, tokens[k::5])) for k in (1, 2, 3)], dtype=np.float64).T.reshape(n, 3)
        pid = np.array(list(map(int, tokens[4::5])), dtype=np.int64).astype(np.int32)
    except ValueError:
        return None
    pbc = info.get("pbc", [True, True, True])
    species, index = np.unique(np.array(tokens[0::5]), return_inverse=True)
    try:
        numbers = np.array([atomic_numbers[str(x)] for x in species], dtype=int)[index.reshape(-1)]
    except KeyError:
        return None
    atoms = Atoms(numbers=numbers, positions=np.ascontiguousarray(positions),
                  cell=np.asarray(info["Lattice"], dtype=np.float64).reshape(3, 3), pbc=pbc)
    atoms.set_array("particle_id", pid)
    if "scene" in info:
        atoms.info["scene"] = info["scene"]
    return atoms


def read_extxyz(path) -> Atoms:
    """Read a scene written by :func:`write_extxyz` (``particle_id`` as int array, ``info["scene"]`` a dict)."""
    from ase.io import read

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        atoms = _read_scene_fast(p) or read(p, format="extxyz")
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
