"""Zero-defocus calibration: the defocus at which the particles-in-vacuum image has minimum contrast.

Paper protocol (Rangel DaCosta et al. 2024): image the particles alone in vacuum with a perfect lens
(no Cs, no envelopes) over a defocus range and take the defocus of minimum contrast — the intensity
variance — searched coarse-to-fine. For a pure phase object the minimum is exactly at the plane where
the wave is a pure phase modulation, i.e. where |ψ| is flat; for real particles it is the plane that
best represents them as a phase object (≈ their mid-plane, measured from the exit plane; defocus > 0
images planes above the exit plane). Sampled defocus values are relative to this value.

The search evaluates the contrast at ``search_range[0]..search_range[1]`` with ``steps[0]`` (1 Å),
then around the best value ±``steps[i-1]`` with ``steps[i]`` (0.1 Å), as in the paper. The range
defaults to the particles' extent along the beam (:func:`defocus_search_range`) when the atoms are
given. Each stage is one batched torch computation (chunks of ``batch_size`` defocus values) on CPU or
CUDA. Measured on a 2.5 nm Au sphere in [001] the curve has two near-equal minima 20 Å apart separated
by a peak 8 Å wide, which a 10 Å first step misses — hence 1 Å.

``search="fast"`` finds the same minimum with less work, without approximating the wave:

- **particle windows**: the particles-in-vacuum wave is flat (|ψ| = 1) away from the particles, so only
  windows around them (each particle's footprint + ``margin``, overlapping windows merged, FFT-friendly
  sizes) are propagated, each with its own periodic FFT. Propagation is unitary, so the mean intensity of a
  window does not change with defocus, and the summed squared deviation Σ_w Σ (I − Ī_w)² has the same
  minimum as the full field's variance as long as the Fresnel fringes stay inside the windows (a 10 Å
  margin covers the ±50 Å search range at 300 kV with room to spare). Band-limiting the wave instead is
  not an option: the minimum-contrast plane is set by the high spatial frequencies (cutting a 0.1 Å wave
  to |k| ≤ 2 Å⁻¹ moved it by up to 2.8 Å on the au-baseline-cpu structures, to 1 Å⁻¹ by up to 13 Å).
- **band-limited coarse scan, exact confirmation**: the first stage scans the whole range on the wave cut
  to |k_x|, |k_y| ≤ ``band`` (2 Å⁻¹ by default) on the smallest FFT grid holding that band (256² instead of
  640² for a 64 Å cell at 0.1 Å: 6× fewer pixels per defocus). That curve is band-limited in the defocus
  too (:func:`scan_stride`), so the scan takes every second 1 Å value at 300 kV. It only *locates* the
  basin — band limiting moved the first-stage minimum by up to 4 Å on 16 au-baseline-cpu structures (up to
  1 Å at 2.5 Å⁻¹) — so the full-band wave is then evaluated at the first stage's grid values around the
  proxy's minimum (±``confirm`` = 2 steps, the window moved on while its best value sits on an inner edge),
  which gives the grid search's first-stage minimum whenever the proxy's basin is the full wave's. On the 48
  au-baseline-cpu structures (``benchmarks/calibration.py --shards 6``) and 15 au-generalist ones (1280²; its
  2/0.5 Å steps and the paper's 1/0.1 Å) the fast search returns exactly the grid search's values, with
  ≈ 8 full-wave evaluations instead of ≈ 70 on the former.
- **vertex walk refinement**: each stage after the first searches the previous stage's best value ±its
  step on its own grid, starting at the grid value nearest the vertex of the parabola through the
  bracket's ends and middle (values the previous stage already has) and walking downhill to a local
  minimum (≈ 3–4 new evaluations instead of 21 for 1 Å → 0.1 Å, every value evaluated once; a golden
  section over the grid values needed ≈ 6).

``search="parabolic"`` trades the grid search's exact value for 2–3× less time again (a 0.1 Å error in the
zero is far below what matters downstream: the CPU baseline samples defocus ±150 Å around it):

- the same band-limited scan locates the basin, and the first-stage values around its minimum (±``confirm``
  = 1 step, moved on the same way) are evaluated on the waves' **band-limited grid**: the spectrum cut to
  ``EVALUATION_GRID`` = 3/4 of the grid per axis (480² for 640²), which holds all of a multislice exit
  wave's frequencies (the antialias aperture keeps 2/3; checked: when more than ``BAND_TOLERANCE`` of the
  spectral power lies outside, the waves' own grid is used). |ψ|² aliases a little differently there: on
  the wave's 2/3 band grid itself (432²) the grid search's minimum moved by up to 0.4 Å, on 3/4 by ≤ 0.1 Å;
- the later stages are replaced by the **vertex of the parabola** through the best first-stage value and its
  two neighbours (already evaluated), rounded to the last step.

On the 48 au-baseline-cpu structures and 15 au-generalist ones (1280²; exit waves of 0.1.0) with the paper's 1/0.1 Å steps it
returns the grid search's value or one 0.1 Å step off (32 + 12 of 63 the same); with au-generalist's 2/0.5 Å
steps one of 15 is one 0.5 Å step off — within the 0.5 Å the tests allow — with ≈ 5 evaluations on the 480²
grid and a 17-value scan on 192² (band 1.5 Å⁻¹ is its default: the same values as 2 Å⁻¹ for less work).

``benchmarks/calibration.py --shards N`` measures the searches on a configuration's structures and prints
the largest difference between them.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from scipy.fft import next_fast_len

from ..device import resolve_device
from ..errors import InputError
from ..simulation.physics import wavelength as electron_wavelength
from ..spectra import crop_complex_spectrum, fft2
from ._common import as_pair, intensity_, phonon_stack
from .aberrations import polar_grid

SEARCHES = ("grid", "fast", "parabolic")
EVALUATION_GRID = 0.75    # the parabolic search's grid, per axis, as a fraction of the waves' grid
BAND_TOLERANCE = 1e-9     # spectral power the waves may have outside that grid (else their own grid is used)
CHUNK_BYTES = 1 << 20     # the fast searches propagate and transform their planes about this many bytes at a time


def contrast_curve(
    waves,
    sampling: float | Sequence[float],
    energy: float,
    defoci: Sequence[float] | np.ndarray,
    device: str | None = "cpu",
    batch_size: int = 16,
) -> np.ndarray:
    """Intensity variance of the perfect-lens image at each defocus [Å]; float64 (len(defoci),).

    ``waves``: complex (nx, ny) or (phonons, nx, ny) (intensities averaged over phonons).
    """
    dev = resolve_device(device)
    w = phonon_stack(waves, dev, "particle_waves")
    s = as_pair(sampling, "sampling")
    lam = electron_wavelength(energy)
    alpha, _ = polar_grid(tuple(w.shape[-2:]), s, lam, dev)
    phase_per_angstrom = math.pi * lam * (alpha / lam) ** 2  # π λ |k|², rad/Å (float64)
    spec = fft2(w)
    d = np.asarray(defoci, dtype=np.float64).reshape(-1)
    if d.size == 0:
        return np.zeros(0)
    step = _uniform_step(phase_per_angstrom, d)
    out = []
    buf = torch.empty((min(batch_size, d.size), *spec.shape), dtype=spec.dtype, device=spec.device)
    for i in range(0, d.size, batch_size):
        inten = _intensities(spec, phase_per_angstrom, d[i : i + batch_size], step, buf)
        out.append(inten.var(dim=(-2, -1), unbiased=False).to(torch.float64))
    return torch.cat(out).cpu().numpy()


class _SeparablePhase:
    """π λ |k|² [rad/Å] on the unshifted FFT grid ``shape`` as its two axis terms π λ k_x² and π λ k_y²
    (float64): the defocus propagator exp(iπλz|k|²) is the outer product of two 1-D exponentials, so it costs
    one complex multiply per pixel instead of a cosine and a sine (and is exact to complex64 rounding)."""

    def __init__(self, shape: tuple[int, int], sampling: tuple[float, float], energy: float, device: torch.device):
        lam = electron_wavelength(energy)
        self.axes = tuple(math.pi * lam * torch.fft.fftfreq(n, d=d, dtype=torch.float64, device=device) ** 2
                          for n, d in zip(shape, sampling, strict=True))
        self.ones = tuple(torch.ones_like(a) for a in self.axes)
        self.square = shape[0] == shape[1] and sampling[0] == sampling[1]  # one axis term serves both axes
        self._steps: dict[float, torch.Tensor] = {}

    def propagator(self, dz: float) -> torch.Tensor:
        ex = torch.polar(self.ones[0], self.axes[0] * dz).to(torch.complex64)
        ey = ex if self.square else torch.polar(self.ones[1], self.axes[1] * dz).to(torch.complex64)
        return ex.unsqueeze(1) * ey

    def step(self, dz: float) -> torch.Tensor:
        """:meth:`propagator` of a uniform spacing ``dz``, kept (read-only): the searches step by the same spacing
        on every structure of a configuration, which shares the grid."""
        key = float(dz)
        p = self._steps.get(key)
        if p is None:
            if len(self._steps) >= 8:
                self._steps.clear()
            p = self._steps[key] = self.propagator(key)
        return p


@functools.lru_cache(maxsize=8)
def _defocus_phase(shape: tuple[int, int], sampling: tuple[float, float], energy: float,
                   device: torch.device) -> _SeparablePhase:
    """π λ |k|² of the grid ``shape`` as a :class:`_SeparablePhase` (read-only: cached per grid, since every
    structure of a configuration shares it)."""
    return _SeparablePhase(shape, sampling, energy, device)


def _uniform_step(phase_per_angstrom: torch.Tensor, defoci: np.ndarray) -> torch.Tensor | None:
    """The propagator of the values' spacing when ``defoci`` are uniformly spaced (then :func:`_intensities`
    steps from one value to the next with one complex multiply), else ``None``."""
    steps = np.diff(defoci)
    uniform = defoci.size > 1 and np.allclose(steps, steps[0], rtol=0, atol=1e-9)
    if not uniform:
        return None
    if isinstance(phase_per_angstrom, _SeparablePhase):
        return phase_per_angstrom.step(float(steps[0]))
    return _propagator(phase_per_angstrom, float(steps[0]))


def _propagator(phase_per_angstrom, dz: float) -> torch.Tensor:
    """exp(−iχ) with χ = π λ k² C10 and C10 = −defocus, complex64: from a float64 phase table exactly (the
    grid search's), from a :class:`_SeparablePhase` as the outer product of its axes' exponentials (the fast
    searches': ≈ 10× cheaper than a cosine and a sine per pixel)."""
    if isinstance(phase_per_angstrom, _SeparablePhase):
        return phase_per_angstrom.propagator(dz)
    return torch.polar(torch.ones_like(phase_per_angstrom), phase_per_angstrom * dz).to(torch.complex64)


def _intensities(spec: torch.Tensor, phase_per_angstrom: torch.Tensor, defoci: np.ndarray,
                 step: torch.Tensor | None, buf: torch.Tensor | None = None, chunk: int | None = None,
                 out: torch.Tensor | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Phonon-averaged intensities (B, nx, ny) of the wave spectrum ``spec`` (P, nx, ny) at each defocus;
    with ``step`` (the propagator of the values' uniform spacing) exact at the first value, then one complex
    multiply per further value. ``chunk``: planes propagated and transformed at a time (default all), the
    recursion carried from one chunk to the next (the same values bit for bit, a smaller working set).
    ``buf``: complex64 scratch of at least (chunk + 1, P, nx, ny), reused between calls; ``out``: float32 scratch
    of at least (B, nx, ny) for the result. ``reduce``: a per-plane reduction of a chunk's intensities (k, nx, ny)
    → (k,), applied to each chunk while it is in the cache; the result is then those values (B,) and ``out``
    needs only ``chunk`` planes.

    The same float32 operations as stacking the propagated spectra and taking view_as_real(ψ).square().sum(-1)
    (bit-identical, checked in tests/test_imaging_fast.py), written into one buffer instead of B fresh arrays
    plus a stack copy, and |ψ|² with :func:`._common.intensity_` (in the buffer, no reduction over a length-2 axis)."""
    n = len(defoci)
    c = n if chunk is None else max(1, min(int(chunk), n))
    carried = step is not None and c < n  # one more plane: the last one of a chunk, before its transform
    if buf is None or buf.shape[0] < c + carried or buf.shape[1:] != spec.shape:
        buf = torch.empty((c + carried, *spec.shape), dtype=spec.dtype, device=spec.device)
    rows = c if reduce is not None else n
    if out is None or out.shape[0] < rows or out.shape[1:] != spec.shape[1:]:
        out = torch.empty((rows, *spec.shape[1:]), dtype=torch.float32, device=spec.device)
    out = out[:rows]
    reduced = []
    for s in range(0, n, c):
        k = min(c, n - s)
        work = buf[:k]
        planes = work.unbind(0)
        if step is not None:
            first = _propagator(phase_per_angstrom, float(defoci[0])) if s == 0 else step
            torch.mul(spec if s == 0 else buf[c], first, out=planes[0])
            for prev, plane in zip(planes[:-1], planes[1:], strict=True):
                torch.mul(prev, step, out=plane)
            if s + k < n:
                buf[c].copy_(planes[-1])
        else:
            for plane, z in zip(planes, defoci[s : s + k], strict=True):
                torch.mul(spec, _propagator(phase_per_angstrom, float(z)), out=plane)
        psi = fft2(work, inverse=True)  # a fresh result: into ``work`` (out=) torch would copy it there
        rows_k = out[:k] if reduce is not None else out[s : s + k]
        if spec.shape[0] == 1:
            intensity_(psi, out=rows_k.unsqueeze(1))
        else:
            torch.mean(intensity_(psi), dim=1, out=rows_k)
        if reduce is not None:
            reduced.append(reduce(rows_k))
    return torch.cat(reduced) if reduce is not None else out


def _power(inten: torch.Tensor, centred: bool) -> torch.Tensor:
    """Σ I² (``centred``: Σ (I − Ī)², centring ``inten`` in place) of each plane of ``inten`` (k, nx, ny), float64."""
    flat = inten.reshape(inten.shape[0], -1)
    if centred:
        flat -= flat.mean(dim=-1, keepdim=True)
    return torch.linalg.vecdot(flat, flat).to(torch.float64)


def _periodic_interval(x: np.ndarray, length: float) -> tuple[float, float]:
    """Shortest periodic interval (start, extent) covering coordinates ``x`` on a circle of ``length``."""
    xs = np.sort(np.mod(np.asarray(x, dtype=np.float64), length))
    gaps = np.diff(np.concatenate([xs, [xs[0] + length]]))
    j = int(np.argmax(gaps))
    return float(xs[(j + 1) % xs.size]), float(length - gaps[j])


def _arcs_overlap(a: tuple[int, int], b: tuple[int, int], n: int) -> bool:
    return (b[0] - a[0]) % n < a[1] or (a[0] - b[0]) % n < b[1]


def _arc_union(a: tuple[int, int], b: tuple[int, int], n: int) -> tuple[int, int]:
    """Shortest pixel arc (start, size) on a circle of ``n`` covering two overlapping arcs."""
    from_a = (a[0], max(a[1], (b[0] - a[0]) % n + b[1]))
    from_b = (b[0], max(b[1], (a[0] - b[0]) % n + a[1]))
    start, size = min(from_a, from_b, key=lambda t: t[1])
    return start, min(size, n)


def particle_windows(atoms, shape: tuple[int, int], sampling: float | Sequence[float], margin: float = 10.0,
                     max_fraction: float = 0.6) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Disjoint periodic pixel windows ``((row_start, rows), (col_start, cols))`` around the particles of
    ``atoms`` (atoms with ``particle_id`` >= 0, grouped by it; each footprint + ``margin`` Å, grown to
    FFT-friendly sizes, overlapping windows merged). ``None`` when the windows would cover more than
    ``max_fraction`` of the field (the full field is then as cheap) or there are no particle atoms."""
    if atoms is None or "particle_id" not in atoms.arrays:
        return None
    pid = np.asarray(atoms.arrays["particle_id"])
    pos = atoms.positions[pid >= 0]
    pid = pid[pid >= 0]
    if pos.size == 0:
        return None
    n = (int(shape[0]), int(shape[1]))
    s = as_pair(sampling, "sampling")
    cell = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    boxes = []
    for p in np.unique(pid):
        box = []
        for ax in (0, 1):
            start, extent = _periodic_interval(pos[pid == p, ax], cell[ax])
            lo = int(math.floor((start - margin) / s[ax]))
            size = min(n[ax], next_fast_len(int(math.ceil((extent + 2 * margin) / s[ax])) + 1))
            box.append((lo % n[ax], size))
        boxes.append(tuple(box))
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if _arcs_overlap(a[0], b[0], n[0]) and _arcs_overlap(a[1], b[1], n[1]):
                    u = []
                    for ax in (0, 1):
                        start, size = _arc_union(a[ax], b[ax], n[ax])
                        u.append((start, n[ax] if size >= n[ax] else min(n[ax], next_fast_len(size))))
                    boxes[i] = tuple(u)
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    if sum(b[0][1] * b[1][1] for b in boxes) > max_fraction * n[0] * n[1]:
        return None
    return boxes


def _window_contrast(waves, sampling, energy: float, atoms, margin: float, device,
                     spectrum: torch.Tensor | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Σ_w Σ (I − Ī_w)² at each defocus of an array, over the :func:`particle_windows` of ``atoms`` (the
    full field when there are none; ``spectrum``: the waves' ``fft2`` when already computed). Separable
    propagators (see :func:`_propagator`); each window's intensities are centred in place and
    reduced with one dot product."""
    dev = resolve_device(device)
    w = phonon_stack(waves, dev, "particle_waves")
    s = as_pair(sampling, "sampling")
    nx, ny = w.shape[-2:]
    parts = []
    for win in particle_windows(atoms, (nx, ny), s, margin) or [None]:
        if win is None:
            sub_spec = spectrum if spectrum is not None else fft2(w)
        else:
            rows = torch.arange(win[0][0], win[0][0] + win[0][1], device=dev) % nx
            cols = torch.arange(win[1][0], win[1][0] + win[1][1], device=dev) % ny
            sub_spec = fft2(w.index_select(-2, rows).index_select(-1, cols))
        parts.append(_cropped_contrast(sub_spec, s, energy, tuple(sub_spec.shape[-2:]), centred=True))

    def evaluate(defoci: np.ndarray) -> np.ndarray:
        d = np.asarray(defoci, dtype=np.float64).reshape(-1)
        total = np.zeros(d.size)
        for part in parts:  # every value of the call in one batch per window
            total += part(d, max(d.size, 1))
        return total

    return evaluate


class _Memo:
    """``f`` (an array of defocus values → contrast values) evaluated once per defocus value (rounded to
    1e-6 Å), batched over the values not seen before."""

    def __init__(self, f: Callable[[np.ndarray], np.ndarray]):
        self.f, self.seen = f, {}
        self.evaluations = 0

    def __call__(self, defoci: np.ndarray) -> np.ndarray:
        d = np.asarray(defoci, dtype=np.float64).reshape(-1)
        keys = [round(float(z), 6) for z in d]
        new = sorted({k for k in keys if k not in self.seen})
        if new:
            self.seen.update(zip(new, (float(v) for v in self.f(np.array(new))), strict=True))
            self.evaluations += len(new)
        return np.array([self.seen[k] for k in keys])


def _vertex_walk(f: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, step: float) -> float:
    """Minimum of ``f`` on the grid ``lo + step·k`` in [lo, hi] (the previous stage's best value ± its step,
    both ends and the middle already evaluated there): start at the grid value nearest the vertex of the
    parabola through the two ends and the middle, then walk downhill one grid value at a time to a local
    minimum (each value evaluated once when ``f`` is a :class:`_Memo`)."""
    n = int(math.floor((hi - lo) / step + 1e-9))

    def z(k: int) -> float:
        return lo + step * k

    mid = n // 2
    fl, fm, fh = (float(v) for v in f(np.array([z(0), z(mid), z(n)])))
    den = fl - 2.0 * fm + fh
    shift = 0.5 * (fl - fh) / den * (z(n) - z(mid)) if den > 0 else 0.0
    k = min(max(int(round((z(mid) + shift - lo) / step)), 0), n)
    while True:
        ks = [j for j in (k - 1, k, k + 1) if 0 <= j <= n]
        j = ks[int(np.argmin(f(np.array([z(i) for i in ks]))))]
        if j == k:
            return z(k)
        k = j


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, use: str = "batch") -> torch.Tensor:
    """A scratch tensor of ``shape`` (at least ``shape[0]`` planes of ``shape[1:]`` kept), one per ``use`` and grid,
    kept per thread and reused across calls and structures: the evaluations of every structure of a
    configuration share their grids, and fresh pages cost more than the arithmetic on a 480² plane."""
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    key = (use, tuple(shape[1:]), dtype, str(device))
    buf = cache.get(key)
    if buf is None or buf.shape[0] < shape[0]:
        if len(cache) >= 8:  # a few grids per thread (scan, evaluation): drop the oldest
            cache.pop(next(iter(cache)))
        buf = cache[key] = torch.empty(shape, dtype=dtype, device=device)
    return buf[: shape[0]]


def _cropped_contrast(spectrum: torch.Tensor, sampling, energy: float, m: tuple[int, int],
                      centred: bool) -> Callable[..., np.ndarray]:
    """Σ I² (``centred``: Σ (I − Ī)²) of the perfect-lens image at each defocus of an array, computed on the
    FFT grid ``m`` from the waves' ``fft2`` ``spectrum`` (P, n_x, n_y) cut (or not) to its ``m`` lowest
    frequencies; batches of ``batch_size`` defocus values (one scratch buffer, reused)."""
    s = as_pair(sampling, "sampling")
    n = tuple(int(v) for v in spectrum.shape[-2:])
    spec = spectrum if m == n else crop_complex_spectrum(
        spectrum, m, out=_scratch((*spectrum.shape[:-2], *m), spectrum.dtype, spectrum.device, use="crop"))
    grid_sampling = s if m == n else (n[0] * s[0] / m[0], n[1] * s[1] / m[1])  # the same field of view
    phase = _defocus_phase(m, grid_sampling, float(energy), spec.device)
    chunk = max(1, CHUNK_BYTES // (spec.numel() * spec.element_size()))  # planes (all phonons) per chunk

    def evaluate(defoci: np.ndarray, batch_size: int = 16) -> np.ndarray:
        d = np.asarray(defoci, dtype=np.float64).reshape(-1)
        out = []
        for i in range(0, d.size, batch_size):
            part = d[i : i + batch_size]
            k = min(part.size, chunk)
            buf = _scratch((k + (k < part.size), *spec.shape), spec.dtype, spec.device)
            inten = _scratch((k, *spec.shape[1:]), torch.float32, spec.device, use="intensity")
            out.append(_intensities(spec, phase, part, _uniform_step(phase, part), buf, chunk, inten,
                                    functools.partial(_power, centred=centred)))
        return torch.cat(out).cpu().numpy() if out else np.zeros(0)

    return evaluate


def _band_contrast(spectrum: torch.Tensor, sampling, energy: float,
                   band: float) -> tuple[Callable[..., np.ndarray], float] | None:
    """Σ I² of the perfect-lens image of the waves whose ``fft2`` is ``spectrum`` (P, n_x, n_y), cut to
    |k_x|, |k_y| ≤ ``band`` [Å⁻¹] on the smallest FFT-friendly grid that holds the band, at each defocus of an
    array (the mean intensity does not change with defocus, so Σ I² has the variance's minimum), and the band
    that grid holds (|k| up to ⌊m/2⌋ indices per axis, ≥ ``band``; it bounds the curve's frequencies, see
    :func:`scan_stride`). ``None`` when that grid is the waves' own (the band cuts nothing: no cheaper
    proxy)."""
    s = as_pair(sampling, "sampling")
    n = tuple(int(v) for v in spectrum.shape[-2:])
    m = tuple(min(n[a], next_fast_len(int(math.ceil(2.0 * band * n[a] * s[a])))) for a in (0, 1))
    if m == n:
        return None
    return _cropped_contrast(spectrum, s, energy, m, centred=False), max((m[a] // 2) / (n[a] * s[a]) for a in (0, 1))


def _evaluation_grid(spectrum: torch.Tensor, fraction: float = EVALUATION_GRID,
                     tolerance: float = BAND_TOLERANCE) -> tuple[int, int]:
    """The parabolic search's evaluation grid: the smallest FFT-friendly grid of ≥ ``fraction`` of the waves'
    points per axis, when the waves' spectrum has at most ``tolerance`` of its power outside it (multislice
    exit waves are band-limited to 2/3 of their Nyquist frequency by the antialias aperture), else the waves'
    own grid."""
    n = tuple(int(v) for v in spectrum.shape[-2:])
    m = tuple(min(n[a], next_fast_len(int(math.ceil(fraction * n[a])))) for a in (0, 1))
    if m == n:
        return n

    def power(t: torch.Tensor) -> float:  # Σ|x|² row by row (rows are contiguous): no squared copy of the block
        r = torch.view_as_real(t).flatten(-2)
        return float(torch.linalg.vecdot(r, r).sum())

    # the power outside the kept frequencies (rows (m+1)//2 … n − m//2 − 1, then those columns of the kept rows),
    # summed on its own (a difference of two totals would drown it in float32 rounding), and inside them (the four
    # corners of the unshifted spectrum): each value read once
    (r0, r1), (c0, c1) = (((m[a] + 1) // 2, n[a] - m[a] // 2) for a in (0, 1))
    outside = (power(spectrum[..., r0:r1, :]) + power(spectrum[..., :r0, c0:c1])
               + power(spectrum[..., r1:, c0:c1]))
    inside = sum(power(spectrum[..., rows, cols]) for rows in (slice(0, r0), slice(r1, None))
                 for cols in (slice(0, c0), slice(c1, None)))
    return m if outside <= tolerance * (inside + outside) else n


def _vertex_offset(fl: float, fm: float, fh: float) -> float:
    """Offset, in steps from the middle value, of the vertex of the parabola through three equally spaced
    values whose middle one is the smallest: within ±½ (0 for a flat or degenerate curve)."""
    den = float(fl) - 2.0 * float(fm) + float(fh)
    return min(max(0.5 * (float(fl) - float(fh)) / den, -0.5), 0.5) if den > 0 else 0.0


def _parabola_vertex(f: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, best: float) -> float:
    """The vertex of the parabola through ``best`` (a local minimum of ``f`` on ``grid``) and its two grid
    neighbours (within half a step of ``best``); ``best`` itself at an end of the grid."""
    k = int(np.argmin(np.abs(grid - best)))
    if k == 0 or k == grid.size - 1:
        return best
    return best + _vertex_offset(*f(grid[k - 1 : k + 2])) * float(grid[k + 1] - grid[k])


def _confirm(f: Callable[[np.ndarray], np.ndarray], grid: np.ndarray, j: int, confirm: int) -> float:
    """Best of ``f`` over ``grid[j − confirm … j + confirm]``, the window moved on while its best value sits on
    an edge that is not the grid's (so a proxy minimum a few steps off still reaches the full wave's)."""
    lo, hi = max(0, j - confirm), min(grid.size - 1, j + confirm)
    while True:
        vals = f(grid[lo : hi + 1])
        k = lo + int(np.argmin(vals))
        if k == lo and lo > 0:
            lo, hi = max(0, lo - confirm), lo + 1
        elif k == hi and hi < grid.size - 1:
            lo, hi = hi - 1, min(grid.size - 1, hi + confirm)
        else:
            return float(grid[k])


def scan_stride(energy: float, band: float, step: float) -> int:
    """Every how many first-stage values the band-limited scan evaluates. Its curve Σ I² is a sum of terms
    exp(−iπλz(k₁² − k₂² + k₃² − k₄²)) with |k|² ≤ 2·band² (``band``: the largest |k_x|, |k_y| the cropped grid
    holds), so it holds no frequency in the defocus above 2λ·band² cycles/Å: samples every 1/(4λ·band²) Å
    (3.2 Å at 300 kV and 2 Å⁻¹) determine it. The scan samples it 1.5× finer than that, at a multiple of
    ``step``."""
    nyquist = 1.0 / (4.0 * electron_wavelength(energy) * band**2)
    return max(1, int(nyquist / (1.5 * step)))


def first_stage_grid(search_range: tuple[float, float], step: float) -> np.ndarray:
    """The first stage's defocus values [Å]: ``search_range[0]`` to ``search_range[1]`` (inclusive within half
    a step) every ``step``."""
    lo, hi = (float(v) for v in search_range)
    return np.arange(lo, hi + 0.5 * step, step)


def defocus_search_range(atoms, margin: float = 10.0) -> tuple[float, float]:
    """Defocus range [Å] spanning the particles' planes, measured from the exit plane at the bottom of
    the cell (z = cell height, as abTEM and the torch engine propagate through the whole cell):
    (c − z_max − margin, c − z_min + margin) over atoms with ``particle_id`` >= 0 (all atoms without it)."""
    z = atoms.positions[:, 2]
    if "particle_id" in atoms.arrays:
        z = z[atoms.arrays["particle_id"] >= 0]
    if z.size == 0:
        raise InputError("atoms: no particle atoms (particle_id >= 0) to calibrate zero defocus on")
    exit_plane = float(atoms.cell[2, 2])
    return (exit_plane - float(z.max()) - margin, exit_plane - float(z.min()) + margin)


def calibrate_zero_defocus(
    particle_waves,
    sampling: float | Sequence[float],
    energy: float,
    search_range: tuple[float, float] | None = None,
    steps: Sequence[float] = (1.0, 0.1),
    atoms=None,
    device: str | None = "cpu",
    batch_size: int = 16,
    search: Literal["grid", "fast", "parabolic"] = "grid",
    margin: float = 10.0,
    band: float | None = None,
    confirm: int | None = None,
    spectrum: torch.Tensor | None = None,
) -> float:
    """Minimum-contrast defocus [Å] of the particles-in-vacuum exit wave (see module docstring).

    ``search_range``: defocus interval of the first stage; default :func:`defocus_search_range` of
    ``atoms`` when given, else (−50, 250) Å. ``steps``: the paper's 1 Å then 0.1 Å (each later stage
    searches ±the previous step around the best value). The contrast curve of crystalline particles has
    sharp features (lattice Fresnel effects, a few Å wide), so the first step should stay ≤ ~2 Å.
    Returns the best defocus rounded to the last step (0.0 when the wave has no contrast at all, e.g. a
    particle-free scene). Raises :class:`InputError` for an empty range or
    non-positive steps.

    ``search``: ``"grid"`` (the paper's protocol: every grid value of every stage on the full field),
    ``"fast"`` (the grid search's value with less work: particle windows of ``margin`` Å around the particles
    of ``atoms`` and vertex-walk refinement) or ``"parabolic"`` (the first stage on the waves' band-limited
    grid, then the vertex of a parabola instead of the later stages; within 0.1 Å of the grid search on the
    paper's steps, 2–3× faster than ``"fast"``); see the module docstring. ``band`` [Å⁻¹]: the coarse scan's
    band; ``confirm``: first-stage steps on each side of the scan's minimum evaluated on the full band
    (defaults: 2 Å⁻¹ and 2 for ``"fast"``, 1.5 Å⁻¹ and 1 for ``"parabolic"``). ``spectrum``: the waves'
    ``fft2`` (P, nx, ny) on ``device`` when the caller already has it (the images stage shares it with the
    labels, :func:`..labels.make_labels`); the fast searches then skip their forward transform.
    """
    if search_range is None:
        search_range = defocus_search_range(atoms) if atoms is not None else (-50.0, 250.0)
    lo, hi = (float(v) for v in search_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"search_range: need finite min < max, got {search_range}")
    if not steps or any(not (st > 0) for st in steps):
        raise InputError(f"steps: must be positive, got {steps}")
    if search not in SEARCHES:
        raise InputError(f"search: expected one of {', '.join(SEARCHES)}, got {search!r}")
    if band is None:
        band = 1.5 if search == "parabolic" else 2.0
    if confirm is None:
        confirm = 1 if search == "parabolic" else 2
    if not (band > 0) or confirm < 1:
        raise InputError(f"band/confirm: need band > 0 and confirm >= 1, got {band}, {confirm}")
    grid = first_stage_grid((lo, hi), steps[0])
    proxy, stride = None, 1
    if search != "grid":
        dev = resolve_device(device)
        if spectrum is None or search == "fast":
            waves = phonon_stack(particle_waves, dev, "particle_waves")
            shape = tuple(waves.shape)
        else:  # the parabolic search needs only the spectrum: the waves' shape checks it (no second conversion)
            shape = tuple(np.shape(particle_waves))
            shape = (1, *shape) if len(shape) == 2 else shape
            if len(shape) != 3:
                raise InputError(f"particle_waves: expected (nx, ny) or (phonons, nx, ny), got shape {shape[1:]}")
        if spectrum is None:
            spectrum = fft2(waves)  # shared by the full-band evaluations and the band-limited scan
        elif tuple(spectrum.shape) != shape or spectrum.device != dev:
            raise InputError(f"spectrum: expected the waves' fft2 of shape {shape} on {dev}, "
                             f"got {tuple(spectrum.shape)} on {spectrum.device}")
        if search == "fast":
            f = _Memo(_window_contrast(waves, sampling, energy, atoms, margin, device, spectrum))
        else:
            f = _Memo(_cropped_contrast(spectrum, sampling, energy, _evaluation_grid(spectrum), centred=True))
        # the band-limited scan locates the basin; the full band confirms it (when the band cuts anything)
        proxy = _band_contrast(spectrum, sampling, energy, band)
        if proxy is not None:
            scan, held = proxy
            stride = scan_stride(energy, held, steps[0])
            curve = scan(grid[::stride], batch_size)
        else:
            curve = np.concatenate([f(grid[i : i + batch_size]) for i in range(0, grid.size, batch_size)])
    else:
        curve = contrast_curve(particle_waves, sampling, energy, grid, device, batch_size)
    if float(np.ptp(curve)) <= 1e-12 * max(float(np.max(curve)), 1e-30):
        return 0.0  # no contrast anywhere (e.g. a scene without particles): nothing to calibrate
    j = int(np.argmin(curve)) * stride
    best = _confirm(f, grid, j, confirm) if proxy is not None else float(grid[j])
    if search == "parabolic":
        best = round(_parabola_vertex(f, grid, best) / steps[-1]) * steps[-1]
    else:
        for prev, step in zip(steps[:-1], steps[1:], strict=True):
            if search == "fast":
                best = _vertex_walk(f, best - prev, best + prev, step)
                continue
            n = int(round(prev / step))
            grid = best + step * np.arange(-n, n + 1)
            best = float(
                grid[np.argmin(contrast_curve(particle_waves, sampling, energy, grid, device, batch_size))]
            )
    digits = max(0, -int(math.floor(math.log10(steps[-1]))))
    return round(best, digits)
