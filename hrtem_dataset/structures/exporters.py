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


def _right_aligned(digits: np.ndarray, v: np.ndarray, last: int, negative: np.ndarray) -> np.ndarray:
    """The 8 bytes ``digits`` (v's digits right-aligned to byte ``last``, zeros before them) with the zeros before
    v's first digit as spaces and a "-" just before that digit where ``negative`` (which leaves it room): ``%d``'s
    text."""
    n_digits = np.ones(v.shape, dtype=np.uint64)
    for k in range(1, last + 1):
        n_digits += (v >= 10**k).astype(np.uint64)
    lead = (np.uint64(last + 1) - n_digits) * np.uint64(8)  # bits of the bytes before the first digit
    mask = (np.uint64(1) << lead) - np.uint64(1)
    text = (digits & ~mask) | (_SPACES & mask)
    with np.errstate(over="ignore"):  # rows without room for a sign compute a shift they do not use
        sign = np.uint64(0xFF) << ((lead - np.uint64(8)) & np.uint64(63))
    return np.where(negative, (text & ~sign) | (np.uint64(0x2D2D2D2D2D2D2D2D) & sign), text)


def _fixed_8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``"%16.8f"`` of each value of ``x`` as two little-endian uint64 of 8 characters each (sign, digits and point;
    the decimals): Python's characters (the exact binary value correctly rounded, ties to even, "-0.00000000" for
    negative values that round to zero), or None where a value is not finite or does not fit the 16 characters
    (7 digits before the point, 6 after a "-"; the %-format path then writes the file).

    |x|·10⁸ < 10¹⁵ < 2⁵³ in float64 is off by at most half an ulp, so the rounding is decided by it except within an
    ulp of a half, where Python's formatting of that value decides (below 3 values in 10⁵ for coordinates under
    1000 Å, where the ulp of |x|·10⁸ is at most 1.5e-5)."""
    a = np.abs(x)
    if not np.all(a < 1e7):  # NaN compares False too
        return None
    y = a * 1e8
    whole = np.floor(y)
    frac = y - whole  # exact: y and its floor are within a factor 2 of each other, or y < 1
    q = whole.astype(np.int64) + (frac > 0.5)
    for i in np.flatnonzero(np.abs(frac - 0.5) <= np.spacing(y)).tolist():  # possibly a tie of the exact value
        q[i] = int(f"{float(a[i]):.8f}".replace(".", ""))
    integer = q // 10**8
    negative = np.signbit(x)
    if not np.all(integer < np.where(negative, 10**6, 10**7)):
        return None
    return _coordinate_head(integer, negative), _eight_digits(q - integer * 10**8)


def _coordinate_head(integer: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """The first 8 characters of ``"%16.8f"`` (sign, digits, point) for the integer parts 0 ≤ v < 10⁷: ``"%08d"`` one
    byte to the left, then the point, the leading zeros as spaces and the "-". Shared by the writer and the parser,
    which accepts a line only when the values it parsed give the text back."""
    head = (_eight_digits(integer) >> np.uint64(8)) | (np.uint64(0x2E) << np.uint64(56))
    return _right_aligned(head, integer, 6, negative)


def _id_text(magnitude: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """``"%8d"`` of particle ids of magnitude < 10⁷ (writer and parser, as :func:`_coordinate_head`)."""
    return _right_aligned(_eight_digits(magnitude), magnitude, 7, negative)


def _atom_lines(numbers: np.ndarray, positions: np.ndarray, pid: np.ndarray) -> str | None:
    """``"%-2s %16.8f %16.8f %16.8f %8d\\n"`` of every atom, formatted as arrays (``benchmarks/structures.py``: 0.026–0.032
    vs 0.137–0.193 s with the %-format for 69.6k atoms; numpy releases the GIL that formatting holds: the structures
    stage writes scenes while its threads draw the next ones); None for values outside :func:`_fixed_8`'s range or
    ids of more than 7 digits."""
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
    lines["id"] = _id_text(magnitude, ids < 0)
    lines["newline"] = 10
    return buffer.tobytes().decode("ascii")


_LINE = _RECORD.itemsize  # "%-2s %16.8f %16.8f %16.8f %8d\n": the atom lines write_extxyz writes
_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


def _eight_digit_value(word: np.ndarray) -> np.ndarray:
    """The integer whose 8 decimal digits (0–9, most significant first) are the bytes of the little-endian
    ``word``: pairs, then fours, then eights combined by multiply-and-shift within the word (no carry crosses a lane
    for digit bytes)."""
    v = (word * np.uint64(10) + (word >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    v = (v * np.uint64(100) + (v >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    return (v * np.uint64(10_000) + (v >> np.uint64(32))) & np.uint64(0xFFFFFFFF)


def _digit_bytes(word: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of ``word`` as digits (low nibbles; spaces, "-" and "." as 0) and whether it holds a "-"."""
    v = word & _NIBBLES
    above_nine = ((v + np.uint64(0x7676767676767676)) & np.uint64(0x8080808080808080)) >> np.uint64(7)
    minus = word ^ np.uint64(0x2D2D2D2D2D2D2D2D)
    negative = ((minus - np.uint64(0x0101010101010101)) & ~minus & np.uint64(0x8080808080808080)) != 0
    return v & ~(above_nine * np.uint64(0xFF)), negative


def _all_digits(word: np.ndarray) -> np.ndarray:
    """Whether each byte of each ``word`` is an ASCII digit."""
    high = np.uint64(0xF0F0F0F0F0F0F0F0)
    zeros = np.uint64(0x3030303030303030)
    return ((word & high) == zeros) & (((word + np.uint64(0x0606060606060606)) & high) == zeros)


def _parse_atom_lines(body: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(atomic numbers, positions, particle_id) of ``n`` atom lines in :func:`write_extxyz`'s fixed-width
    format, parsed as arrays: each field's 8-byte words decoded as integers within the word, a position = its
    integer of 1e-8 Å / 1e8 — one correctly rounded division of two exactly representable numbers (below 2⁵³), so
    the same double as ``float()`` of the text (the correctly rounded value of the same decimal). The lines the
    parsed values make in the writer's format (symbol, signs, digits, spaces, points) must be the text byte for
    byte, which accepts exactly the lines the writer writes; ``None`` for anything else (a value too wide for its
    field, other spacing, a stray character, an unknown element): the caller then splits the text. Faster than the
    digit-matrix parse it replaces (``benchmarks/structures.py``: 0.042 vs 0.063 s for 69.6k atoms), and numpy
    releases the GIL that a Python loop holds (the images and exit-wave stages work on structures in threads)."""
    raw = body.encode("ascii", errors="replace")
    if n <= 0 or len(raw) != _LINE * n:
        return None
    lines = np.frombuffer(raw, dtype=_RECORD)
    expected = np.full(len(raw), 32, dtype=np.uint8).view(_RECORD)  # the same lines, rebuilt from the values
    codes, index = np.unique(lines["symbol"], return_inverse=True)
    try:
        known = np.array([atomic_numbers[int(c).to_bytes(2, "little").decode().strip()] for c in codes.tolist()],
                         dtype=int)
    except (KeyError, UnicodeDecodeError):
        return None
    numbers = known[index.reshape(-1)]
    expected["symbol"] = _SYMBOLS[numbers]
    positions = np.empty((n, 3))
    for c, name in enumerate("xyz"):
        head, negative = _digit_bytes(lines[name])
        integer = _eight_digit_value(head << np.uint64(8))  # the digits before the point, the point dropped
        decimals = lines[name + "8"]
        if not np.all(_all_digits(decimals)):
            return None
        value = (integer.astype(np.float64) * 1e8 + _eight_digit_value(decimals & _NIBBLES).astype(np.float64)) / 1e8
        positions[:, c] = np.where(negative, -value, value)
        expected[name] = _coordinate_head(integer, negative)
        expected[name + "8"] = decimals
    digits, negative = _digit_bytes(lines["id"])
    magnitude = _eight_digit_value(digits)
    expected["id"] = _id_text(magnitude, negative)
    expected["newline"] = 10
    if expected.tobytes() != raw:
        return None
    ids = magnitude.astype(np.int64)
    return numbers, positions, np.where(negative, -ids, ids).astype(np.int32)


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
