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
import re
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from ..errors import InputError
from ..io import atomic_path
from .thermal import default_rms_displacement

_PROPERTIES = "species:S:1:pos:R:3:particle_id:I:1"
_HEADER = re.compile(r'Lattice="([^"]*)" Properties=(\S+)(?: scene="((?:[^"\\]|\\")*)")? pbc="([TF]) ([TF]) ([TF])"')


def _ase_escape(value: str) -> str:
    """``ase.io.extxyz.escape``: values with spaces, quotes or brackets are quoted, ``"`` as ``\"``."""
    if any(c in value for c in " \"'{}[]"):
        return '"' + value.replace('"', '\\"') + '"'
    return value


def write_extxyz(atoms: Atoms, path) -> Path:
    """Write ``atoms`` (with ``particle_id`` and ``info["scene"]``) as extxyz, atomically.

    Scenes (species, positions, an int ``particle_id``, a non-zero cell, nothing else) are formatted here in
    one pass, ASE's header and ``%-2s %16.8f %16.8f %16.8f %8d`` lines: the same bytes as
    ``ase.io.write(..., format="extxyz")`` (checked in tests/test_structures.py) without ASE's per-atom loop
    or importing ``ase.io`` (≈ 0.4 s per process). Anything else goes through ASE's writer."""
    out = atoms.copy()
    out.info = {}
    if "scene" in atoms.info:
        out.info["scene"] = json.dumps(atoms.info["scene"], sort_keys=True, separators=(",", ":"))
    path = Path(path)
    pid = out.arrays.get("particle_id")
    fast = (set(out.arrays) == {"numbers", "positions", "particle_id"} and pid is not None
            and pid.dtype.kind == "i" and pid.ndim == 1 and not out.constraints and out.calc is None
            and bool(out.cell.any()))
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        if not fast:
            from ase.io import write

            write(fh, out, format="extxyz")
            return path
        head = ['Lattice="' + " ".join(str(x) for x in np.asarray(out.cell[:], dtype=np.float64).reshape(9).tolist())
                + '"', f"Properties={_PROPERTIES}"]
        if "scene" in out.info:
            head.append("scene=" + _ase_escape(out.info["scene"]))
        head.append("pbc=" + _ase_escape(" ".join("T" if b else "F" for b in out.pbc)))
        fh.write(f"{len(out)}\n{' '.join(head)}\n")
        lines = _atom_lines(out.numbers, out.positions, pid)
        if lines is None:  # one %-format over all atoms (3× faster than formatting line by line), the same text
            values: list = []
            for row in zip(out.get_chemical_symbols(), out.positions.tolist(), pid.tolist(), strict=True):
                values.extend((row[0], *row[1], row[2]))
            lines = ("%-2s %16.8f %16.8f %16.8f %8d\n" * len(out)) % tuple(values)
        fh.write(lines)
    return path


# the atom lines as records of fixed byte offsets: "%-2s %16.8f %16.8f %16.8f %8d\n" is the symbol, then per coordinate
# 8 bytes of sign, digits and point and 8 bytes of decimals, then the id's 8 bytes; the rest is spaces and "\n"
_RECORD = np.dtype({"names": ["symbol", "x", "x8", "y", "y8", "z", "z8", "id", "newline"],
                    "formats": ["<u2", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8", "u1"],
                    "offsets": [0, 3, 11, 20, 28, 37, 45, 54, 62], "itemsize": 63})
_SYMBOLS = np.array([int.from_bytes(f"{s:<2}".encode()[:2], "little") if len(s) <= 2 else 0 for s in chemical_symbols],
                    dtype=np.uint16)  # "%-2s" of each element's symbol (none is longer than 2)
_FOUR = np.array([int.from_bytes(f"{i:04d}".encode(), "little") for i in range(10_000)], dtype=np.uint64)  # "%04d"
_SPACES = np.uint64(0x2020202020202020)


def _eight_digits(v: np.ndarray) -> np.ndarray:
    """``"%08d"`` of the integers 0 ≤ v < 10⁸ as 8 bytes in a little-endian uint64 (two lookups of four digits)."""
    high = v // 10_000
    return _FOUR[high] | (_FOUR[v - high * 10_000] << np.uint64(32))


def _right_aligned(digits: np.ndarray, v: np.ndarray, n_max: int, negative: np.ndarray) -> np.ndarray:
    """The 8 bytes ``digits`` (v's digits right-aligned in the first ``n_max`` + 1 bytes, zeros before them) with the
    zeros before v's first digit as spaces and a "-" just before that digit where ``negative``: ``%d``'s text."""
    n_digits = np.ones(v.shape, dtype=np.uint64)
    for k in range(1, n_max):
        n_digits += (v >= 10**k).astype(np.uint64)
    lead = (np.uint64(n_max + 1) - n_digits) * np.uint64(8)  # bits of the bytes before the first digit
    mask = (np.uint64(1) << lead) - np.uint64(1)
    text = (digits & ~mask) | (_SPACES & mask)
    sign = np.uint64(0xFF) << (lead - np.uint64(8))
    return np.where(negative, (text & ~sign) | (np.uint64(0x2D2D2D2D2D2D2D2D) & sign), text)


def _fixed_8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``"%16.8f"`` of each value of ``x`` as two little-endian uint64 of 8 characters each (sign, digits and point;
    the decimals): Python's characters (the exact binary value correctly rounded, ties to even, "-0.00000000" for
    negative values that round to zero), or None where a value is not finite or has 7 or more digits before the point
    (the %-format path then writes the file).

    |x|·10⁸ < 10¹⁴ in float64 is off by at most half an ulp, so the rounding is decided by it except within an ulp of
    a half, where Python's formatting of that value decides (about 1 value in 10⁵ for scene coordinates)."""
    a = np.abs(x)
    if not np.all(a < 1e6):  # NaN compares False too
        return None
    y = a * 1e8
    whole = np.floor(y)
    frac = y - whole  # exact: y and its floor are within a factor 2 of each other, or y < 1
    q = whole.astype(np.int64) + (frac > 0.5)
    for i in np.flatnonzero(np.abs(frac - 0.5) <= np.spacing(y)).tolist():  # possibly a tie of the exact value
        q[i] = int(f"{float(a[i]):.8f}".replace(".", ""))
    integer = q // 10**8
    # "%08d" of the integer part (< 10⁶) one byte to the left, then the point: sign and 6 digits in bytes 0–6
    head = (_eight_digits(integer) >> np.uint64(8)) | (np.uint64(0x2E) << np.uint64(56))
    return _right_aligned(head, integer, 6, np.signbit(x)), _eight_digits(q - integer * 10**8)


def _atom_lines(numbers: np.ndarray, positions: np.ndarray, pid: np.ndarray) -> str | None:
    """``"%-2s %16.8f %16.8f %16.8f %8d\\n"`` of every atom, formatted as arrays (≈ 10× faster than the %-format of a
    scene, and numpy releases the GIL that formatting holds: the structures stage writes scenes while its threads
    draw the next ones); None for values outside :func:`_fixed_8`'s range or ids of more than 7 digits."""
    n = len(numbers)
    ids = np.asarray(pid, dtype=np.int64)
    numbers = np.asarray(numbers)
    if n == 0 or not (np.all((numbers >= 0) & (numbers < len(_SYMBOLS))) and np.all(np.abs(ids) < 10**7)):
        return None
    symbols = _SYMBOLS[numbers]
    if not np.all(symbols):
        return None
    buffer = np.full(n * _RECORD.itemsize, 32, dtype=np.uint8)
    lines = buffer.view(_RECORD)
    lines["symbol"] = symbols
    for c, name in enumerate("xyz"):
        text = _fixed_8(np.ascontiguousarray(positions[:, c], dtype=np.float64))
        if text is None:
            return None
        lines[name], lines[name + "8"] = text
    magnitude = np.abs(ids)
    lines["id"] = _right_aligned(_eight_digits(magnitude), magnitude, 7, ids < 0)
    lines["newline"] = 10
    return buffer.tobytes().decode("ascii")


_LINE = 63  # "%-2s %16.8f %16.8f %16.8f %8d\n": the atom lines write_extxyz writes
_WHOLE = ((3, 10), (20, 27), (37, 44), (54, 62))  # columns of the four fields' integer parts (x, y, z: "." next)


def _line_weights() -> np.ndarray:
    """(63, 4) float64: each column's decimal weight in x, y, z (units of 1e-8 Å) and particle_id."""
    w = np.zeros((_LINE, 4))
    for f, (lo, hi) in enumerate(_WHOLE):
        frac = 8 if f < 3 else 0
        w[lo:hi, f] = 10.0 ** np.arange(hi - lo - 1 + frac, frac - 1, -1)
        w[hi + 1 : hi + 1 + frac, f] = 10.0 ** np.arange(frac - 1, -1, -1)
    return w


_WEIGHTS = _line_weights()
# rows per product: 1024 × 63 × 4 multiply-adds stay below OpenBLAS's threading threshold (65,536 × 4), so each
# product runs in the calling thread; one threaded product of a whole scene left OpenBLAS's worker thread
# spinning for ≈ 0.1 s after it (a core taken from the other workers of a stage; the same speed either way)
_BLOCK_ROWS = 1024
_CLASS = np.full(256, -9, dtype=np.int8)  # per byte: space 0, "-" 1, digit 2, anything else -9
_CLASS[32], _CLASS[45], _CLASS[48:58] = 0, 1, 2


def _parse_atom_lines(body: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(atomic numbers, positions, particle_id) of ``n`` atom lines in :func:`write_extxyz`'s fixed-width
    format, parsed as arrays: each value's digits as one integer (one float64 matrix product, exact below
    2^53), a position = its integer of 1e-8 Å / 1e8 — one correctly rounded division of two exactly
    representable numbers, so the same double as ``float()`` of the text (the correctly rounded value of the
    same decimal). ``None`` unless every line has exactly that form (spaces, an optional ``-``, digits; the
    point and 8 decimals; a known element) — a value too wide for its field, other spacing: the caller then
    splits the text. ≈ 4× faster than ``float()`` per token, and numpy releases the GIL that a Python loop
    holds (the images and exit-wave stages work on structures in threads)."""
    raw = body.encode("ascii", errors="replace")
    if n <= 0 or len(raw) != _LINE * n:
        return None
    a = np.frombuffer(raw, dtype=np.uint8).reshape(n, _LINE)
    if not (np.all(a[:, 62] == 10) and np.all(a[:, [2, 19, 36, 53]] == 32) and np.all(a[:, [10, 27, 44]] == 46)):
        return None
    cls = _CLASS[a]
    digit = cls == 2
    negative = np.empty((n, 4), dtype=bool)
    for f, (lo, hi) in enumerate(_WHOLE):
        if hi < 62 and not np.all(digit[:, hi + 1 : hi + 9]):
            return None  # the 8 decimals
        whole = cls[:, lo:hi]  # spaces, then at most one "-", then digits, ending in a digit
        step = np.diff(whole, axis=1)
        if not (np.all(whole[:, -1] == 2) and np.all(step >= 0) and np.all(whole >= 0)
                and not np.any((step == 0) & (whole[:, 1:] == 1))):
            return None
        negative[:, f] = (whole == 1).any(axis=1)
    digits = ((a - np.uint8(48)) * digit).astype(np.float64)
    values = np.empty((n, 4))
    for i in range(0, n, _BLOCK_ROWS):  # (n, 4); exact in any order, so the same doubles as one product
        np.matmul(digits[i : i + _BLOCK_ROWS], _WEIGHTS, out=values[i : i + _BLOCK_ROWS])
    positions = values[:, :3] / 1e8  # |value| < 1e7 Å (the field's width): the integer is below 2^53, exact
    positions = np.where(negative[:, :3], -positions, positions)
    ids = np.where(negative[:, 3], -values[:, 3], values[:, 3]).astype(np.int32)
    codes, index = np.unique(a[:, 0].astype(np.uint16) << 8 | a[:, 1], return_inverse=True)
    try:
        known = np.array([atomic_numbers[bytes([c >> 8, c & 255]).decode().strip()] for c in codes.tolist()],
                         dtype=int)
    except (KeyError, UnicodeDecodeError):
        return None
    return known[index.reshape(-1)], positions, ids


def _read_scene_fast(p: Path) -> Atoms | None:
    """The scenes :func:`write_extxyz` writes (one frame; header Lattice, Properties species/pos/particle_id,
    scene, pbc), parsed here: the same Atoms as ``ase.io.read`` (numbers, positions, cell and pbc bit for
    bit, the same scene string; checked in tests/test_structures.py) without importing ``ase.io``. ``None``
    for anything else (ASE reads it)."""
    with open(p) as fh:
        first = fh.readline()
        header = fh.readline()
        body = fh.read()
    m = _HEADER.fullmatch(header.strip())
    if m is None or m.group(2) != _PROPERTIES:
        return None
    scene = m.group(3)
    if scene is not None:
        scene = scene.replace('\\"', '"')
        if "\\" in scene:  # backslashes inside the scene: leave the unescaping to ASE
            return None
    try:
        n = int(first.strip())
        cell = np.array([float(v) for v in m.group(1).split()], dtype=np.float64).reshape(3, 3)
    except ValueError:
        return None
    parsed = _parse_atom_lines(body, n)
    if parsed is None:
        tokens = body.split()
        if len(tokens) != 5 * n:
            return None  # more frames or a damaged file: ASE decides
        try:  # float() is ASE's parse too (correctly rounded): the same doubles
            positions = np.array([list(map(float, tokens[k::5])) for k in (1, 2, 3)],
                                 dtype=np.float64).T.reshape(n, 3)
            pid = np.array(list(map(int, tokens[4::5])), dtype=np.int64).astype(np.int32)
        except ValueError:
            return None
        species, index = np.unique(np.array(tokens[0::5]), return_inverse=True)
        try:
            numbers = np.array([atomic_numbers[str(x)] for x in species], dtype=int)[index.reshape(-1)]
        except KeyError:
            return None
    else:
        numbers, positions, pid = parsed
    atoms = Atoms(numbers=numbers, positions=np.ascontiguousarray(positions), cell=cell,
                  pbc=[v == "T" for v in m.group(4, 5, 6)])
    atoms.set_array("particle_id", pid)
    if scene is not None:
        atoms.info["scene"] = scene
    return atoms


def read_extxyz(path) -> Atoms:
    """Read a scene written by :func:`write_extxyz` (``particle_id`` as int array, ``info["scene"]`` a dict)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        atoms = _read_scene_fast(p)
        if atoms is None:
            from ase.io import read

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
