"""Atomic artifact writes and the workspace root.

All artifacts are written to a temporary name in the destination directory and then renamed with
``os.replace`` (atomic on POSIX), so a killed run never leaves a half-written file that a later stage
could read. Directories are built under a temporary name and renamed into place the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError
from .settings import get_settings


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def workspace_root(root: str | os.PathLike | None = None) -> Path:
    """Workspace for intermediate artifacts: ``root``, else ``$HRTEM_HOME``, else ``./.hrtem``
    (:meth:`hrtem_dataset.settings.Settings.workspace`)."""
    return get_settings().workspace(root)


def make_public(path: str | os.PathLike) -> Path:
    """Published artifacts are for others: 0755 for a folder, 0644 for a file (atomic writes create
    owner-only temporaries)."""
    path = Path(path)
    os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return path


def make_public_files(folder: str | os.PathLike) -> None:
    """:func:`make_public` on every non-hidden file below ``folder``."""
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            make_public(p)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``, else delete it.

    The temporary name is hidden and ends in ``.tmp`` (so no glob for ``*.parquet``/``*.npz`` ever picks
    it up): pass an explicit format to writers that infer it from the extension, or write through an open
    file handle (``np.savez(fh, ...)`` with a handle does not append ``.npz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp.", suffix=suffix if suffix is not None else ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; on success it replaces ``path`` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            if not overwrite:
                raise FileExistsError(path)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def npz_writer(fh, level: int = 1) -> Iterator:
    """An ``.npz`` written member by member: yields ``add(name, array)``, which deflates ``array`` at ``level``
    and appends it as ``name.npy`` (the format of ``np.savez_compressed``; members in the order added). Lets a
    producer write its arrays as they come instead of holding them all until one :func:`save_npz` call."""
    import io as _io
    import zipfile

    import numpy as np

    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        def add(name: str, value) -> None:
            buf = _io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue(),
                        compress_type=zipfile.ZIP_DEFLATED, compresslevel=level)

        yield add


def save_npz(fh, level: int = 1, **arrays) -> None:
    """``np.savez_compressed`` with a deflate ``level`` (numpy's is zlib's default, 6): the same ``.npz``
    format and arrays for ``np.load``. Level 1 writes an images shard ≈ 4× faster than level 6 for ≈ 1.3× the
    bytes (noisy float32 images dominate both)."""
    with npz_writer(fh, level) as add:
        for name, value in arrays.items():
            add(name, value)


def check_output_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """Fail early (before any compute) when ``path`` cannot be an output file: an existing directory,
    or a parent that exists as a file or cannot be created/written."""

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{option} {p}: is a directory (give a file name)")
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{option} {p}: {probe} is not a directory")
    if not os.access(probe, os.W_OK):
        raise InputError(f"{option} {p}: {probe} is not writable")
    try:  # os.access is always true for root: create (and delete) a file to be sure
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise InputError(f"{option} {p}: {probe} is not writable ({exc.strerror or exc})") from None
    return p


def check_output_dir(path: str | os.PathLike, allowed: tuple[str, ...] = (), option: str = "--out") -> Path:
    """Fail early when ``path`` is not a safe output directory to replace: the working directory or one
    of its parents, a file, or a non-empty directory holding anything but ``allowed`` glob patterns (a
    previous output of the same command)."""

    p = Path(path)
    resolved, cwd = p.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"{option} {p}: refusing to replace the working directory or one of its parents")
    return check_output_folder(p, allowed, option, "directory is not empty and was not made by this command")


def check_output_folder(path: str | os.PathLike, allowed: tuple[str, ...], option: str = "--out",
                        foreign_message: str = "folder holds files this command did not write") -> Path:
    """Fail early when ``path`` is a file, a folder holding anything but ``allowed`` glob patterns (a
    previous output of the same command), or cannot be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{option} {p}: exists and is not a directory")
    if p.is_dir():
        foreign = sorted(c.name for c in p.iterdir() if not any(fnmatch.fnmatch(c.name, pat) for pat in allowed))
        if foreign:
            raise InputError(f"{option} {p}: {foreign_message} (e.g. {foreign[0]!r}); choose a new folder")
    check_output_file(p / "x", option)
    return p


def read_npz(path: str | os.PathLike) -> dict:
    """The arrays of an ``.npz`` file, like ``dict(np.load(path, allow_pickle=False))``.

    Members stored uncompressed (``np.savez``) are read straight into their arrays: one ``readinto`` each, the
    zip CRC-32 checked with ``zlib.crc32``; both run without Python's GIL. ``np.load`` reads them through
    ``zipfile`` in 256 KiB pieces with Python code around each, which competes for the GIL with the torch
    calls of other threads (the images stage images structures in threads). Compressed members, object
    arrays and .npy format 3.0 headers go through ``np.load``. A damaged file raises :class:`InputError`
    naming it."""
    import struct
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    fmt = np.lib.format
    out: dict = {}
    try:
        slow: set[str] = set()  # members np.load reads
        with open(path, "rb") as fh, zipfile.ZipFile(fh) as zf:
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
                    slow.add(name)
                    continue
                fh.seek(info.header_offset)
                local = fh.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("bad local header")
                start = info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
                fh.seek(start)
                version = fmt.read_magic(fh)
                if version not in ((1, 0), (2, 0)):
                    slow.add(name)
                    continue
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, fortran, dtype = read_header(fh)
                if dtype.hasobject:
                    raise ValueError("object array")
                header_len = fh.tell() - start
                arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
                if header_len + arr.nbytes != info.file_size:
                    raise ValueError("member size")
                fh.seek(start)
                crc = zlib.crc32(fh.read(header_len))
                view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
                if arr.size and fh.readinto(view) != arr.nbytes:
                    raise ValueError("truncated member")
                if zlib.crc32(view, crc) != info.CRC:
                    raise ValueError("CRC mismatch")
                out[name] = arr.T if fortran else arr
        if slow:
            with np.load(path, allow_pickle=False) as z:
                out.update({k: z[k] for k in z.files if k in slow})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as exc:
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    return out
