"""Ground-truth labels from the particles-in-vacuum exit wave: phase-threshold masks and instance maps.

Paper protocol (Rangel DaCosta et al. 2024): simulate the particles alone in vacuum; mask = exit-wave
phase > π/16, Gaussian blur (1–1.6 Å), binarise. Measured with abTEM on Au spheres (0.1 Å sampling,
300 kV), a raw per-pixel phase > π/16 covers only 30–80 % of the projected area π r² (the phase
between atomic columns is small and thick columns wrap past π). What this module does instead, keeping
the paper's threshold π/16 and blur σ = 1 Å as defaults:

1. Plane: the particle wave is first propagated to its calibrated zero-defocus plane (minimum contrast,
   :func:`hrtem_dataset.imaging.calibrate_zero_defocus`; ``LabelSpec.plane = "zero_defocus"``), where
   it is closest to a pure phase object. Without this, Fresnel fringes from the vacuum between the
   particle and the exit plane (substrate thickness + padding, 50–250 Å) change the mask with the
   scene geometry: 0.99 -> 1.04 of π r² for r = 2.5 nm as the exit plane moves 200 Å further away,
   whereas at the zero-defocus plane the coverage stays within ±0.01.
2. |phase| (``LabelSpec.phase = "abs"``) instead of the signed phase: wrapped thick columns
   (phase > π reads as negative) then still count as particle.
3. Gaussian blur of |phase| with σ = ``blur`` Å *before* thresholding (periodic, in Fourier space):
   a local average of the phase, ≈ σ_interaction · mean inner potential · thickness, so the
   threshold becomes a projected-thickness threshold (≈ 10 Å of Au at π/16, 300 kV) instead of a
   per-column one.
4. Band-limit to the image pixel size: the blurred field is Fourier-cropped to the detector grid
   (:func:`hrtem_dataset.imaging.resampled_shape`, the same grid as ``render_image``) and thresholded
   there, so mask and image pixels coincide and nothing aliases.

Measured coverage of π r² (abTEM exit waves, Au spheres centred on an atom, 0.2 Å label pixels,
[001] / one random orientation): r = 2.5 nm: 0.94 / 0.95; r = 1.5 nm: 0.90 / 0.90; r = 1 nm:
0.74 / 0.69 (tests/test_labels.py checks r = 2.5 nm within 10 % and r = 1.5 nm within 20 %, in [001]
and random orientations). For comparison at an exit plane 55 Å (35 Å) below the sphere: raw phase > π/16
0.64 / 0.82 (r = 2.5 nm) and 0.44 / 0.79 (r = 1.5 nm); |phase| blurred 1 Å 0.99 / 0.97 and 0.96 / 0.91.
The mask depends only on the particle wave and the structure's zero defocus,
never on imaging defocus, aberrations or dose.

Instances: every particle atom (``particle_id`` ≥ 0) is projected onto the detector grid; each mask
pixel takes the id of the nearest projected particle atom (periodic Euclidean distance transform), so
touching particles split along the perpendicular bisector of their atoms. Instance id = particle_id + 1,
0 = background.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError
from .imaging._common import as_pair, phonon_stack
from .imaging.calibration import calibrate_zero_defocus
from .imaging.ctf import _octant, _octant_expand
from .imaging.resample import resampled_sampling, resampled_shape
from .simulation.physics import wavelength as electron_wavelength
from .specs import LabelSpec
from .spectra import crop_spectrum


def phase_field(
    particle_waves,
    sampling: float | Sequence[float] = 0.1,
    *,
    energy: float = 300e3,
    defocus: float = 0.0,
    signed: bool = False,
    blur: float = 1.0,
    pixel_size: float | Sequence[float] | None = None,
    spectrum: torch.Tensor | None = None,
) -> np.ndarray:
    """Blurred (|)phase(|) [rad] of the particle wave at the plane ``defocus`` [Å] (= −C10, > 0 above the
    exit plane), Fourier-cropped to ``pixel_size``; float32 on the output grid.

    Keyword options in the order of the computation: the beam ``energy`` [eV] and ``defocus`` pick the
    plane, ``signed`` keeps the sign of the phase (else |phase|), ``blur`` is the Gaussian σ [Å] and
    ``pixel_size`` [Å] the output grid (``None``: the simulation grid). ``spectrum``: the ``fft2`` of one
    configuration's wave, (1, nx, ny) or (nx, ny) on the CPU, when the caller has it (the images stage computes
    it once for the zero-defocus calibration and the labels): the same bytes as transforming the wave here;
    ignored for several configurations (their coherent mean is transformed)."""
    s = as_pair(sampling, "sampling")
    if not (math.isfinite(blur) and blur >= 0):
        raise InputError(f"blur: must be >= 0 Å, got {blur}")
    # coherent (elastic) average over phonon configurations
    stack = phonon_stack(particle_waves, torch.device("cpu"), "particle_waves")
    w = stack.mean(dim=0)
    nx, ny = w.shape
    if spectrum is not None and stack.shape[0] != 1:
        spectrum = None  # several configurations: their coherent mean is transformed below
    if spectrum is not None and (spectrum.numel() != nx * ny or spectrum.device != w.device):
        raise InputError(f"spectrum: expected the particle wave's fft2 of shape {(nx, ny)} on the CPU, got "
                         f"{tuple(spectrum.shape)} on {spectrum.device}")
    if defocus:
        prop = defocus_propagator((nx, ny), s, math.pi * electron_wavelength(energy) * float(defocus))
        w = torch.fft.ifft2((torch.fft.fft2(w) if spectrum is None else spectrum.reshape(nx, ny)) * prop)
    phase = torch.angle(w)
    if not signed:
        phase = phase.abs()
    spec = torch.fft.rfft2(phase.to(torch.float64))
    if blur > 0:
        kx = torch.fft.fftfreq(nx, d=s[0], dtype=torch.float64)
        kyr = torch.fft.rfftfreq(ny, d=s[1], dtype=torch.float64)
        spec = spec * torch.exp(-2 * math.pi**2 * blur**2 * (kx[:, None] ** 2 + kyr[None, :] ** 2))
    shape = (nx, ny) if pixel_size is None else resampled_shape((nx, ny), s, pixel_size)
    spec = crop_spectrum(spec, shape) * (shape[0] * shape[1] / (nx * ny))
    return torch.fft.irfft2(spec, s=shape).to(torch.float32).numpy()


def defocus_propagator(shape: tuple[int, int], sampling: tuple[float, float], c: float) -> torch.Tensor:
    """exp(i·c·|k|²) on the unshifted FFT grid of ``shape`` × ``sampling`` [Å], complex64 (nx, ny), with c = πλ·defocus
    [Å²]: computed in float64 (|k|² from ``fftfreq``), then rounded. On a square grid of equal sampling the pixels
    with the same (min(|i|, |j|), max(|i|, |j|)) have bit-identical |k|² (:func:`.imaging.ctf._octant`), so the
    phase factor is computed on one octant and copied out — the same bits as on every pixel (a test compares
    them), with 1/8 of the cosines and sines (torch's float64 ``polar`` is scalar: 9 ms at 640²)."""
    nx, ny = shape
    octant = nx == ny and sampling[0] == sampling[1]
    if octant:
        rows, cols, inverse = _octant(nx, "cpu")
        k2 = _k2(shape, sampling)[rows, cols]
    else:
        k2 = _k2(shape, sampling)
    prop = torch.polar(torch.ones_like(k2), c * k2).to(torch.complex64)
    return _octant_expand(prop[None], inverse.reshape(-1), shape)[0] if octant else prop


@functools.lru_cache(maxsize=4)
def _k2(shape: tuple[int, int], sampling: tuple[float, float]) -> torch.Tensor:
    """|k|² [Å⁻²] float64 on the unshifted FFT grid (the same values every call; read only)."""
    kx = torch.fft.fftfreq(shape[0], d=sampling[0], dtype=torch.float64)
    ky = torch.fft.fftfreq(shape[1], d=sampling[1], dtype=torch.float64)
    return kx[:, None] ** 2 + ky[None, :] ** 2


def phase_mask(
    particle_waves, sampling: float | Sequence[float] = 0.1, *, threshold: float = math.pi / 16, **field
) -> np.ndarray:
    """Particle mask, bool, (nx, ny) or the ``pixel_size`` grid: :func:`phase_field` > ``threshold`` rad,
    i.e. the Gaussian-blurred (σ = ``blur`` Å) |phase| of the particles-in-vacuum wave (see the module
    docstring). ``field``: the keyword options of :func:`phase_field` (``energy``, ``defocus``, ``signed``,
    ``blur``, ``pixel_size``). With the contract defaults the phase is taken at the exit plane;
    ``make_labels`` passes the structure's zero defocus as ``defocus``."""
    if not (0 < threshold < math.pi):
        raise InputError(f"threshold: must be in (0, π) rad, got {threshold}")
    return phase_field(particle_waves, sampling, **field) > threshold


def _circular_mean(labels: np.ndarray, theta: np.ndarray, n: int) -> np.ndarray:
    """Per-label circular mean angle in [0, 2π) of ``theta`` (periodic coordinates)."""
    c = np.bincount(labels, weights=np.cos(theta), minlength=n)
    s = np.bincount(labels, weights=np.sin(theta), minlength=n)
    return np.mod(np.arctan2(s, c), 2 * np.pi)


def _scene_info(atoms) -> dict:
    info = atoms.info.get("scene", {}) if hasattr(atoms, "info") else {}
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError:
            return {}
    return info if isinstance(info, dict) else {}


def _defect_types(p: dict) -> list[str]:
    types = set()
    if int(p.get("twins", 0) or 0) > 0:
        types.add("twin")
    if int(p.get("stacking_faults", 0) or 0) > 0:
        types.add("stacking_fault")
    for key in ("defects", "defect_planes"):
        for d in p.get(key, None) or []:
            if isinstance(d, dict) and d.get("type"):
                types.add(str(d["type"]))
            elif isinstance(d, str):
                types.add(d)
    return sorted(types)


INSTANCE_REACH = 8.0
"""Å: :func:`instance_map` pads the periodic field by this distance; mask pixels farther than it from every
particle atom take the exact 3×3-tiled transform instead."""


def instance_map(atoms, mask: np.ndarray, pixel_size: tuple[float, float]) -> np.ndarray:
    """int32 instance ids (particle_id + 1) on the mask grid, 0 outside the mask (periodic nearest atom)."""
    mx, my = mask.shape
    out = np.zeros((mx, my), dtype=np.int32)
    if "particle_id" not in atoms.arrays:
        raise InputError("atoms: missing per-atom array 'particle_id'")
    pid = np.asarray(atoms.arrays["particle_id"], dtype=np.int64)
    sel = pid >= 0
    if not sel.any() or not mask.any():
        return out
    pos = atoms.positions[sel, :2]
    ix = np.mod(np.rint(pos[:, 0] / pixel_size[0]).astype(np.int64), mx)
    iy = np.mod(np.rint(pos[:, 1] / pixel_size[1]).astype(np.int64), my)
    seeds = np.zeros((mx, my), dtype=np.int32)
    seeds[ix, iy] = (pid[sel] + 1).astype(np.int32)
    # periodic: the field wrap-padded by INSTANCE_REACH holds every seed within that distance of the centre; a
    # mask pixel farther than that from its nearest seed (never on simulated particles: mask pixels lie within
    # a few Å of their atoms) takes the field padded by its whole size, i.e. the 3×3 tiling
    pad = tuple(min(int(math.ceil(INSTANCE_REACH / px)), n) for px, n in zip(pixel_size, (mx, my), strict=True))
    nearest, dist = _nearest_seed(seeds, pad, pixel_size)
    if float(dist[mask].max()) > min(pad[0] * pixel_size[0], pad[1] * pixel_size[1]):
        nearest, _ = _nearest_seed(seeds, (mx, my), pixel_size)
    out[mask] = nearest[mask]
    return out


def _nearest_seed(seeds: np.ndarray, pad: tuple[int, int], pixel_size) -> tuple[np.ndarray, np.ndarray]:
    """The value of the nearest non-zero pixel of ``seeds`` and its distance [Å], for every pixel, on the field
    wrap-padded by ``pad`` pixels per side (exact for pixels whose nearest seed is within the pad)."""
    mx, my = seeds.shape
    padded = np.pad(seeds, [(pad[0], pad[0]), (pad[1], pad[1])], mode="wrap")
    dist, (ii, jj) = ndimage.distance_transform_edt(padded == 0, sampling=pixel_size, return_indices=True)
    centre = (slice(pad[0], pad[0] + mx), slice(pad[1], pad[1] + my))
    return padded[ii, jj][centre], dist[centre]


VACUUM_MARGIN = 6.0
"""Å: pixels farther than this from every particle atom count as vacuum in the particle-only waves."""


def vacuum_region(atoms, shape: tuple[int, int], sampling: tuple[float, float],
                  margin: float = VACUUM_MARGIN) -> np.ndarray:
    """Bool ``[x, y]`` map of grid pixels farther than ``margin`` Å (in projection, periodic in x and y) from every
    particle atom — vacuum in the particle-only exit waves, where |ψ| must be 1.

    The pixels holding an atom (nearest grid point) dilated by the disk of offsets within ``margin`` (the same
    distances, ``sqrt((Δi·s_x)² + (Δj·s_y)²)`` in float64, as a Euclidean distance transform computes: the same map,
    tests compare it with one), as a periodic convolution by FFT: a few times faster than the transform on a 640²
    grid (the exit-wave checks run it on every structure of a partition)."""
    pid = np.asarray(atoms.arrays.get("particle_id", np.zeros(len(atoms), int)))
    pos = atoms.positions[pid >= 0]
    if len(pos) == 0:
        return np.ones(shape, bool)
    shape = (int(shape[0]), int(shape[1]))
    lx, ly = shape[0] * sampling[0], shape[1] * sampling[1]
    # nearest grid point (bins centred on the samples), periodic in x and y
    extent = [[-sampling[0] / 2, lx - sampling[0] / 2], [-sampling[1] / 2, ly - sampling[1] / 2]]
    px = np.mod(pos[:, 0] + sampling[0] / 2, lx) - sampling[0] / 2
    py = np.mod(pos[:, 1] + sampling[1] / 2, ly) - sampling[1] / 2
    hist, _, _ = np.histogram2d(px, py, bins=shape, range=extent)
    disk = _disk_spectrum(shape, (float(sampling[0]), float(sampling[1])), float(margin))
    # atoms within the margin of each pixel: integer counts, float64 rounding ≪ ½ (torch's FFTs: 3× numpy's here)
    occupied = torch.from_numpy((hist > 0).astype(np.float64))
    near = torch.fft.irfft2(torch.fft.rfft2(occupied) * disk, s=shape)
    return (near < 0.5).numpy()


@functools.lru_cache(maxsize=4)  # one grid per configuration; 13 MB at 1280²
def _disk_spectrum(shape: tuple[int, int], sampling: tuple[float, float], margin: float) -> torch.Tensor:
    """``rfft2`` of the periodic indicator of the pixel offsets within ``margin`` Å of a pixel (offsets that wrap
    onto the same pixel of a small grid are summed, so each periodic image of an atom counts)."""
    r = [int(math.floor(margin / s)) + 1 for s in sampling]
    di, dj = np.arange(-r[0], r[0] + 1), np.arange(-r[1], r[1] + 1)
    inside = np.sqrt((di[:, None] * sampling[0]) ** 2 + (dj[None, :] * sampling[1]) ** 2) <= margin
    ii, jj = np.nonzero(inside)
    kernel = np.zeros(shape)
    np.add.at(kernel, (di[ii] % shape[0], dj[jj] % shape[1]), 1.0)
    return torch.fft.rfft2(torch.from_numpy(kernel))  # float64: complex128


def particle_table(atoms, instances: np.ndarray, pixel_size: tuple[float, float]) -> list[dict]:
    """Per-particle statistics: id, area [Å²], equivalent diameter [Å], centroid [x, y] Å, pixel and atom
    counts, and the particle's material/shape/size/defect types from ``atoms.info["scene"]``."""
    pid = np.asarray(atoms.arrays.get("particle_id", np.zeros(0)), dtype=np.int64)
    ids = np.unique(pid[pid >= 0])
    scene_particles = _scene_info(atoms).get("particles", []) or []
    mx, my = instances.shape
    nmax = int(ids.max()) + 2 if ids.size else 1
    flat = instances.ravel()
    counts = np.bincount(flat, minlength=nmax)
    # periodic cell: circular mean per axis, so a particle that wraps across an edge keeps its centroid
    tx, ty = np.meshgrid(2 * np.pi * np.arange(mx) / mx, 2 * np.pi * np.arange(my) / my, indexing="ij")
    sx = _circular_mean(flat, tx.ravel(), nmax) * mx * pixel_size[0] / (2 * np.pi)
    sy = _circular_mean(flat, ty.ravel(), nmax) * my * pixel_size[1] / (2 * np.pi)
    atom_counts = np.bincount(pid[pid >= 0], minlength=nmax)
    area_px = pixel_size[0] * pixel_size[1]
    rows = []
    for k in ids.tolist():
        n = int(counts[k + 1])
        area = n * area_px
        row = {
            "id": k + 1,
            "particle_id": k,
            "n_pixels": n,
            "area": float(area),
            "equivalent_diameter": float(2 * math.sqrt(area / math.pi)),
            "centroid": [float(sx[k + 1]), float(sy[k + 1])] if n else [math.nan, math.nan],
            "n_atoms": int(atom_counts[k]),
        }
        p = scene_particles[k] if k < len(scene_particles) and isinstance(scene_particles[k], dict) else {}
        for key in (
            "material",
            "shape",
            "radius",
            "twins",
            "stacking_faults",
            "twin_planes",
            "stacking_fault_planes",
            "orientation",
        ):
            if key in p:
                row[key] = p[key]
        row["defect_types"] = _defect_types(p)
        rows.append(row)
    return rows


def make_labels(
    particle_waves,
    atoms,
    sampling: float | Sequence[float],
    pixel_size: float | Sequence[float],
    spec: LabelSpec | None = None,
    zero_defocus: float | None = None,
    energy: float = 300e3,
    spectrum: torch.Tensor | None = None,
) -> dict:
    """Mask, instance map and per-particle table on the ``render_image`` grid at ``pixel_size``.

    ``particle_waves``: the particles-in-vacuum exit wave (nx, ny) at ``sampling``; ``atoms``: the scene
    (``particle_id`` per atom, ``info["scene"]``), positions in the waves' frame. ``zero_defocus``: the
    structure's calibrated minimum-contrast defocus [Å]; computed here when ``None`` and
    ``spec.plane == "zero_defocus"``. Returns ``mask`` bool (m_x, m_y), ``instances`` int32 (particle_id + 1,
    0 = background; 0/1 when ``spec.instances`` is false), ``particles`` list of dicts, ``zero_defocus``.
    ``spectrum``: the particle waves' ``fft2`` when the caller has it (see :func:`phase_field`).
    """
    spec = spec or LabelSpec()
    s = as_pair(sampling, "sampling")
    shape = np.shape(particle_waves)[-2:]
    px = resampled_sampling(shape, s, pixel_size)
    if spec.plane == "exit":
        zd = 0.0
    elif zero_defocus is None:
        zd = calibrate_zero_defocus(particle_waves, s, energy, atoms=atoms)
    else:
        zd = float(zero_defocus)
    mask = phase_mask(particle_waves, s, threshold=spec.threshold, energy=energy, defocus=zd,
                      signed=spec.phase == "signed", blur=spec.blur, pixel_size=pixel_size, spectrum=spectrum)
    instances = instance_map(atoms, mask, px)
    table = particle_table(atoms, instances, px)
    return {
        "mask": mask,
        "instances": instances if spec.instances else mask.astype(np.int32),
        "particles": table,
        "zero_defocus": zd,
        "pixel_size": px,
    }
