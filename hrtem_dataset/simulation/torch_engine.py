"""The project's own multislice engine in PyTorch (CPU and CUDA run the same code).

Physics and conventions:

- Grid: ``gpts = ceil(L / sampling)`` per axis as in abTEM, actual sampling ``L / gpts``; arrays are
  indexed ``[x, y]``; spatial frequencies k in 1/Å (no 2π), ``k = fftfreq(n, d)``.
- Slicing: ``n = ceil(L_z / slice_thickness)`` slices of equal thickness ``Δz = L_z / n``; every atom
  (wrapped into the periodic cell) belongs to the slice that holds its centre and contributes its
  whole infinitely projected potential there ("infinite projection", as abTEM's
  ``projection="infinite"``).
- Projected potential of a slice, in Fourier space, per element s:
  v̂(k) = (1/A) Σ_s V̂_s(k) S_s(k), with V̂_s = C·f_e,s (see :mod:`.potentials`) and the structure
  factor S_s(k) = Σ_{a∈s} exp(−2πi k·r_a) evaluated by non-uniform FFT gridding (no rounding or
  interpolation of positions): every atom is spread over w×w pixels with a separable
  "exponential of semicircle" kernel φ (one scatter-add), the grid is FFT'd and the kernel's
  transform divided out, S = FFT(Σ_a φ(· − r_a)) / Φ̂(k). Default ``structure_factors="nufft"``: w = 8
  on the simulation grid, S accurate to ~2e-5 inside the antialias band the multislice keeps;
  ``"exact"``: 1.5× oversampled grid, accurate on the whole band; ``"bilinear"``: abTEM's scheme.
  Cost: w² scatter-adds per atom plus one real FFT per (slice, element) present.
- Transmission function t = exp(iσ v_z) on the grid, as Prismatic uses it (default); with
  ``antialias_transmission=True`` band-limited first by the antialias aperture A, as abTEM does (one more
  FFT pair per slice and wave). A: |k| < 2/3 of the Nyquist frequency 1/(2·max(Δx, Δy)), with abTEM's
  narrow cosine edge. The wave is band-limited by A after every slice either way. Why the default: against
  runs at 0.025 Å (where the two agree to 0.1–0.8 %), t used as it is gives the closer exit wave at 0.1 and
  0.2 Å (e.g. a 1.5 nm Au [110] sphere on 3 nm carbon at 0.1 Å: 1.9 % vs 3.7 %; random orientation
  1.4 % vs 1.5 %; equal at 0.05 Å): band-limiting t drops its components between 2/3 and 1 of the Nyquist
  frequency, whose products with the wave fall back inside the band, a larger error than the aliasing it
  removes (``tests/test_validation.py`` measures both on the validation report's scene).
- Multislice: ψ_{n+1} = F⁻¹[P·A·F(t_n ψ_n)], P = exp(−iπλΔz|k|²), ψ_0 = 1 (plane wave, so vacuum
  gives |ψ| = 1 exactly). Runs of empty slices are crossed in one propagation step
  with P(mΔz)·Aᵐ, identical to m single steps; leading empty slices leave a plane wave unchanged. In a
  batch, each wave skips the slices that are empty for it (a particles-only wave batched with its scene
  crosses the substrate's slices in one step), as when it runs alone.
- complex64 waves, float32 potentials, float64 atom coordinates.
- Batching: many waves (frozen-phonon configurations and/or structures) that share the lateral grid
  and slicing run through the same FFT calls as one (B, nx, ny) batch. Memory is bounded by
  ``max_memory`` bytes: the batch is split and slices are processed in chunks.
- CPU and CUDA run the same code (``device``); on CPU with 2–3 torch threads the transmission
  functions of the next slice chunks are built in worker threads (intra-op threads set to 1 for the
  duration of the call) while the main thread propagates — single-threaded streams use 2 cores
  better than multi-threaded FFTs of one 1280² array. Results are deterministic for given inputs and
  settings (CPU; CUDA scatter-adds use atomics, identical only to float rounding).

Size: over 400 lines because the multislice kernel (gridding, structure factors, propagator, slicing,
batching under a memory bound) is one numerical algorithm whose parts share private tables.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from ase.data import chemical_symbols

from ..device import resolve_device, single_threaded_torch, torch_threads
from ..errors import InputError
from ..limits import check_memory
from ..spectra import plane_groups
from .physics import interaction_parameter, wavelength
from .potentials import get_parametrization

DEFAULT_MAX_MEMORY = 1 << 30  # bytes of working memory per chunk (waves + potentials) on the CPU
CUDA_MAX_MEMORY = 4 << 30  # on an accelerator: at most this, and at most 1/8 of the device's memory
KERNEL_WIDTH = 8  # gridding kernel width in (fine-)grid pixels
KERNEL_BETA = 2.0  # ES kernel shape β / w
STRUCTURE_FACTORS = {  # name -> (grid oversampling, kernel width); see _Tables
    "nufft": (1.0, KERNEL_WIDTH),
    "exact": (1.5, KERNEL_WIDTH),
    "bilinear": (1.0, 2),
}
_ATOM_BLOCK = 131072  # atoms gridded per scatter call
_PHASES: dict | None = None  # thread-seconds and transform counts per phase while profile_phases() is active
_PHASES_LOCK = threading.Lock()


@contextlib.contextmanager
def profile_phases():
    """Collect, while active, the time spent in each phase of :func:`multislice` and the number of FFTs each
    phase ran (for ``benchmarks/exit_wave.py``). Yields a dict ``phase -> {"s", "cpu_s", "fft2", "rfft2"}``
    (``s``: wall seconds summed over threads; ``cpu_s``: CPU seconds of the calling threads, which excludes
    time spent waiting for a core and counts only the calling thread's work — with torch intra-op threads
    the work of the other pool threads is not in it). Phases:
    ``gridding`` (scatter-add of the atoms), ``structure_factors`` (real FFT per plane), ``potential``
    (form factors, sum over species, inverse real FFT), ``transmission`` (exp(iσv) and its band limit: one
    complex FFT pair), ``propagation`` (t·ψ and the Fresnel step: one complex FFT pair per wave and slice).
    Phases in the worker threads overlap the main thread's propagation, so their sum exceeds the wall time.
    """
    global _PHASES
    previous, _PHASES = _PHASES, {}
    try:
        yield _PHASES
    finally:
        _PHASES = previous


@contextlib.contextmanager
def _phase(name: str, fft2: int = 0, rfft2: int = 0):
    if _PHASES is None:
        yield
        return
    t0, c0 = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        with _PHASES_LOCK:
            d = _PHASES.setdefault(name, {"s": 0.0, "cpu_s": 0.0, "fft2": 0, "rfft2": 0})
            d["s"] += dt
            d["cpu_s"] += dc
            d["fft2"] += fft2
            d["rfft2"] += rfft2


@dataclass(frozen=True)
class Grid:
    """Lateral simulation grid: ``gpts = ceil(extent / sampling)``, actual ``sampling = extent / gpts``."""

    extent: tuple[float, float]
    gpts: tuple[int, int]

    @classmethod
    def from_sampling(cls, extent: Sequence[float], sampling: float) -> Grid:
        gpts = tuple(int(np.ceil(float(e) / float(sampling))) for e in extent[:2])
        return cls((float(extent[0]), float(extent[1])), gpts)  # type: ignore[arg-type]

    @property
    def sampling(self) -> tuple[float, float]:
        return (self.extent[0] / self.gpts[0], self.extent[1] / self.gpts[1])


def slicing(thickness: float, slice_thickness: float) -> tuple[int, float]:
    """Number of slices ``ceil(L_z / Δz)`` and their equal thickness (Å), as abTEM."""
    n = max(1, int(np.ceil(float(thickness) / float(slice_thickness))))
    return n, float(thickness) / n


# --------------------------------------------------------------------------------------------------
# Gridding kernel ("exponential of semicircle", Barnett et al., SIAM J. Sci. Comput. 41 (2019) C479)
# --------------------------------------------------------------------------------------------------


def _es_beta(width: int) -> float:
    return KERNEL_BETA * width


def _es_kernel(x: torch.Tensor, width: int) -> torch.Tensor:
    """φ(x) = exp(β(√(1 − (2x/w)²) − 1)) for |x| < w/2 (x in fine pixels), else 0; w = 2: hat 1 − |x|."""
    if width == 2:
        return torch.clamp(1.0 - x.abs(), min=0.0)
    t = (2.0 / width) * x
    arg = torch.clamp(1.0 - t * t, min=0.0)
    return torch.where(arg > 0, torch.exp(_es_beta(width) * (torch.sqrt(arg) - 1.0)), torch.zeros_like(x))


@lru_cache(maxsize=16)
def _es_fourier(width: int, n_fine: int) -> np.ndarray:
    """Φ̂(ξ) = ∫ φ(x) exp(−2πiξx) dx at ξ = m / n_fine for m = 0..n_fine-1 (Gauss–Legendre)."""
    nodes, weights = np.polynomial.legendre.leggauss(4 * width + 60)
    x = nodes * width / 2.0
    w = weights * width / 2.0
    t = 2.0 * x / width
    phi = np.exp(_es_beta(width) * (np.sqrt(np.clip(1.0 - t * t, 0.0, None)) - 1.0))
    xi = np.fft.fftfreq(n_fine)
    return (np.cos(2.0 * np.pi * np.outer(xi, x)) * (phi * w)).sum(1)


def _spatial_frequencies(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(grid.gpts[0], grid.sampling[0]), np.fft.fftfreq(grid.gpts[1], grid.sampling[1])


ANTIALIAS_TAPER = 0.01  # width of the cosine edge, in units of 1/max(sampling) (abTEM's default)


def antialias_aperture(grid: Grid) -> np.ndarray:
    """Antialias aperture A(k) (float64, (nx, ny)): 1 for |k| < k_c − τ, 0 beyond k_c, cosine edge.

    k_c = (2/3)·1/(2·max(Δx, Δy)) (2/3 of the Nyquist frequency) and τ = 0.01/max(Δx, Δy), as abTEM.
    """
    kx, ky = _spatial_frequencies(grid)
    cutoff = (2.0 / 3.0) / (2.0 * max(grid.sampling))
    taper = ANTIALIAS_TAPER / max(grid.sampling)
    k = np.sqrt(kx[:, None] ** 2 + ky[None] ** 2)
    edge = 0.5 * (1.0 + np.cos(np.pi * (k - cutoff + taper) / taper))
    return np.where(k < cutoff - taper, 1.0, np.where(k < cutoff, edge, 0.0))


def _fresnel(k2: np.ndarray, energy: float, dz: float) -> np.ndarray:
    """P = exp(−iπλΔz|k|²) at the squared spatial frequencies ``k2`` [Å⁻²], complex128."""
    return np.exp(-1j * np.pi * wavelength(energy) * dz * k2)


def fresnel_propagator(grid: Grid, energy: float, dz: float) -> np.ndarray:
    """P·A: exp(−iπλΔz|k|²) times the antialias aperture, complex128 (nx, ny)."""
    kx, ky = _spatial_frequencies(grid)
    return _fresnel(kx[:, None] ** 2 + ky[None] ** 2, energy, dz) * antialias_aperture(grid)


def _abtem_sinc(grid: Grid) -> np.ndarray:
    """abTEM's pixel correction for bilinear deltas: sin(q)/q, q = |(kx Δx, ky Δy)| (no π), rfft band."""
    kx = np.fft.fftfreq(grid.gpts[0], grid.sampling[0]) * grid.sampling[0]
    ky = np.fft.rfftfreq(grid.gpts[1], grid.sampling[1]) * grid.sampling[1]
    q = np.sqrt(kx[:, None] ** 2 + ky[None] ** 2)
    return np.where(q > 0, np.sin(q) / np.where(q > 0, q, 1.0), 1.0)


class _Tables:
    """Per-(grid, device) constant arrays: form factors, aperture, propagators, crop indices.

    ``structure_factors`` selects how S(k) is put on the grid (all without per-atom Python loops):

    - ``"nufft"`` (default): exponential-of-semicircle kernel (w = 8) on the simulation grid, divided
      out: S(k) to ~2e-5 inside the antialias band |k| < (2/3)·k_Nyquist, the band the multislice keeps
      (outside it the gridded S is aliased; exit waves differ from ``"exact"`` by ~1e-3 relative L2).
    - ``"exact"``: the same kernel on a 1.5× oversampled grid, S(k) to ~2e-5 on the whole grid band.
    - ``"bilinear"``: abTEM's scheme for its infinite projection (bilinear deltas on the simulation
      grid, divided by sin(q)/q); kept to cross-check the rest of the pipeline against abTEM.
    """

    def __init__(self, grid: Grid, energy: float, parametrization: str, device: torch.device,
                 structure_factors: str = "nufft"):
        if structure_factors not in STRUCTURE_FACTORS:
            raise InputError(f"structure_factors: unknown {structure_factors!r} "
                             f"(choose from {', '.join(STRUCTURE_FACTORS)})")
        oversampling, width = STRUCTURE_FACTORS[structure_factors]
        self.grid, self.energy, self.device = grid, energy, device
        self.oversampling, self.width = oversampling, width
        self.param = get_parametrization(parametrization)
        nx, ny = grid.gpts
        self.fine = (int(round(oversampling * nx)), int(round(oversampling * ny)))
        # indices of the simulation-grid band inside the fine-grid rfft spectrum
        self.rows = torch.as_tensor(np.round(np.fft.fftfreq(nx) * nx).astype(np.int64) % self.fine[0],
                                    device=device)
        self.ncols = ny // 2 + 1
        kx = np.fft.fftfreq(nx, grid.sampling[0])
        ky = np.fft.rfftfreq(ny, grid.sampling[1])
        self._k2 = kx[:, None] ** 2 + ky[None] ** 2
        # v = irfft2(X) with X = C f(k) S(k) / (Δx Δy); the gridded spectrum is Φ̂x Φ̂y S.
        if width == 2:
            kernel_ft = _abtem_sinc(grid)
        else:
            kernel_ft = (_es_fourier(width, self.fine[0])[self.rows.cpu().numpy()][:, None]
                         * _es_fourier(width, self.fine[1])[: self.ncols][None])
        self._deconv = 1.0 / (grid.sampling[0] * grid.sampling[1] * kernel_ft)
        self._form: dict[str, torch.Tensor] = {}
        aperture = antialias_aperture(grid)
        self.aperture = torch.as_tensor(aperture, dtype=torch.complex64, device=device)
        # the aperture's support (|k| < k_c, about a third of the grid) with its values and |k|² there: the
        # propagators vanish outside it, so they are evaluated on it only (the same values as
        # fresnel_propagator there, ≈ 3× less work per new Δz than on the whole grid; structures differ in Δz)
        self._support = np.flatnonzero(aperture > 0)
        self._support_aperture = aperture.ravel()[self._support]
        kx, ky = _spatial_frequencies(grid)
        self._support_k2 = (kx[:, None] ** 2 + ky[None] ** 2).ravel()[self._support]
        self._props: dict[tuple[int, float], torch.Tensor] = {}
        self._lock = threading.Lock()  # the caches are filled from several threads (wave streams)

    def form_factors(self, symbols: Sequence[str]) -> torch.Tensor:
        """(S, nx, ny//2+1) complex64 (real values): C f_s(k) / (Δx Δy Φ̂), the per-element multiplier."""
        with self._lock:
            for s in symbols:
                if s not in self._form:
                    f = self.param.projected_form_factor(s, self._k2) * self._deconv
                    self._form[s] = torch.as_tensor(f, dtype=torch.complex64, device=self.device)
            return torch.stack([self._form[s] for s in symbols])

    def propagator(self, steps: int, dz: float) -> torch.Tensor:
        """P(steps·Δz)·A^steps: ``steps`` slice propagations in one (identical to stepping one by one)."""
        # keyed by the propagation distance too: Δz = cell height / n slices differs between structures
        key = (int(steps), float(dz))
        with self._lock:
            if key not in self._props:
                while len(self._props) >= 32:  # bounded: a dataset sees many different Δz
                    self._props.pop(next(iter(self._props)))
                a = self._support_aperture
                # fresnel_propagator(grid, energy, steps·Δz) · A^(steps−1), on the aperture's support (0 elsewhere)
                values = _fresnel(self._support_k2, self.energy, steps * dz) * a * a ** (steps - 1)
                p = np.zeros(self.grid.gpts[0] * self.grid.gpts[1], dtype=np.complex64)
                p[self._support] = values
                self._props[key] = torch.as_tensor(p.reshape(self.grid.gpts), device=self.device)
            return self._props[key]


_TABLE_CACHE: dict[tuple, _Tables] = {}
_TABLE_LOCK = threading.Lock()


def _tables(grid: Grid, energy: float, parametrization: str, device: torch.device,
            structure_factors: str) -> _Tables:
    """Cached :class:`_Tables` (a few recent grids), so repeated calls reuse form factors and propagators."""
    key = (grid, energy, parametrization, str(device), structure_factors)
    with _TABLE_LOCK:  # structures simulated side by side build a grid's tables once
        if key not in _TABLE_CACHE:
            while len(_TABLE_CACHE) >= 4:
                _TABLE_CACHE.pop(next(iter(_TABLE_CACHE)))
            _TABLE_CACHE[key] = _Tables(grid, energy, parametrization, device, structure_factors)
        return _TABLE_CACHE[key]


@dataclass
class _Specimen:
    positions: np.ndarray  # (N, 3) float64, Å
    numbers: np.ndarray  # (N,) int


def _chunk_bytes(grid: Grid, oversampling: int) -> tuple[int, int]:
    nx, ny = grid.gpts
    mx, my = int(round(oversampling * nx)), int(round(oversampling * ny))
    plane = mx * my * 4 + mx * (my // 2 + 1) * 8 + nx * (ny // 2 + 1) * 8
    target = nx * (ny // 2 + 1) * 8 + nx * ny * (4 + 8 + 8 + 8)
    return plane, target


def _batch_size(grid: Grid, max_memory: int) -> int:
    """Waves propagated at once: (psi, buf, transmission) x 2 of them fit ``max_memory``, at least one."""
    nx, ny = grid.gpts
    return max(1, int(max_memory // (2 * nx * ny * 8 * 3)))


def default_max_memory(device: str | torch.device = "cpu") -> int:
    """Working-memory bound of :func:`multislice` when none is given: :data:`DEFAULT_MAX_MEMORY` on the CPU; on
    CUDA ``min(CUDA_MAX_MEMORY, total device memory / 8)`` (never below the CPU's: a batch of 16 waves at 1280²
    then runs as one sub-batch, 1.4× the waves/s under the CPU's bound, measured on an H200)."""
    device = resolve_device(device)
    if device.type != "cuda":
        return DEFAULT_MAX_MEMORY
    total = torch.cuda.get_device_properties(device).total_memory
    return int(max(DEFAULT_MAX_MEMORY, min(CUDA_MAX_MEMORY, total // 8)))


def memory_estimate(grid: Grid, n_waves: int, max_memory: int = DEFAULT_MAX_MEMORY,
                    structure_factors: str = "nufft", n_species: int = 1,
                    device: str | torch.device = "cpu") -> int:
    """Peak working memory (bytes) of :func:`multislice` for ``n_waves`` waves on ``grid``, an upper estimate.

    The output (n_waves complex64 grids), the waves in flight (psi + FFT buffer per wave of a sub-batch),
    the constant tables and their float64/complex128 temporaries (~8 complex64 grids), and the slice
    chunks of transmission functions being built (at least one slice of every wave of the sub-batch and
    species, per pipeline worker + 1), which :func:`_multislice_batch` never splits further.
    """
    nx, ny = grid.gpts
    wave = nx * ny * 8
    n = max(int(n_waves), 1)
    batch = min(_batch_size(grid, max_memory), n)
    plane, target = _chunk_bytes(grid, STRUCTURE_FACTORS.get(structure_factors, (1.0, 0))[0])
    workers = _pipeline_workers(resolve_device(device))
    chunk = batch * (max(int(n_species), 1) * plane + target)
    return int(wave * (n + 2 * batch + 8) + (workers + 1) * chunk)


def multislice(specimens: Sequence[_Specimen], cell: Sequence[float], sampling: float = 0.1,
               energy: float = 300e3, slice_thickness: float = 2.0, parametrization: str = "lobato",
               device: str | torch.device = "cpu", max_memory: int | None = None,
               structure_factors: str = "nufft", antialias_transmission: bool = False) -> torch.Tensor:
    """Exit waves of ``specimens`` (all in the same orthorhombic ``cell``, Å) -> complex64 (B, nx, ny).

    The specimens run as one batch through the same FFT calls (split into sub-batches and slice chunks
    so that the working memory stays below ``max_memory`` bytes; default :func:`default_max_memory`).
    ``antialias_transmission``: band-limit each transmission function to the antialias aperture (abTEM's
    scheme) instead of using exp(iσv) as it is (Prismatic's, the default; see the module's docstring).
    """
    device = resolve_device(device)
    max_memory = int(max_memory) if max_memory is not None else default_max_memory(device)
    grid = Grid.from_sampling(cell, sampling)
    n_species = len(_species(specimens)[0])
    check_memory("simulation (torch engine)",
                 memory_estimate(grid, len(specimens), max_memory, structure_factors, n_species, device),
                 f"grid {grid.gpts[0]} x {grid.gpts[1]}, {len(specimens)} wave{'s' if len(specimens) != 1 else ''}")
    n_slices, dz = slicing(cell[2], slice_thickness)
    tables = _tables(grid, float(energy), str(parametrization), device, structure_factors)
    nx, ny = grid.gpts
    batch = _batch_size(grid, max_memory)
    out = torch.empty((len(specimens), nx, ny), dtype=torch.complex64, device=device)
    cell = np.asarray(cell, dtype=np.float64)

    def run(members: list[int], pipeline: bool) -> None:
        for start in range(0, len(members), batch):
            idx = members[start:start + batch]
            out[idx] = _multislice_batch([specimens[i] for i in idx], cell, grid, n_slices, dz, tables, max_memory,
                                         bool(antialias_transmission), pipeline)

    streams = _wave_streams(specimens, n_slices, dz, _pipeline_workers(device))
    if streams is None:
        run(list(range(len(specimens))), True)
        return out
    with torch_threads(1), ThreadPoolExecutor(max_workers=len(streams), thread_name_prefix="hrtem-waves",
                                              initializer=single_threaded_torch) as pool:
        for f in [pool.submit(run, members, False) for members in streams]:
            f.result()
    return out


def _slice_index(z: np.ndarray, dz: float, n_slices: int) -> np.ndarray:
    """The slice (0 … ``n_slices`` − 1) that holds each atom's centre ``z`` [Å]: not periodic along the beam, an
    atom at z = L_z (or a phonon displacement past a face) belongs to the first/last slice."""
    return np.clip(np.floor((z + 1e-12) / dz).astype(np.int64), 0, n_slices - 1)


def _wave_streams(specimens: Sequence[_Specimen], n_slices: int, dz: float, workers: int) -> list[list[int]] | None:
    """On a CPU with ``workers`` (2–3) pipeline threads and at least two waves: the waves split into up to
    ``workers`` + 1 independent streams, each run start to end by one single-threaded thread (it builds its own
    transmission functions and propagates its own waves), balanced by the number of non-empty slices of each wave
    (greedy, longest first). One thread more than cores: the usual batch of a scene (two frozen-phonon
    configurations and the particles alone, a shorter wave) is shared out by the OS better than split in two
    (au-baseline-cpu's exit-wave stage on 2 cores: 3.19 s vs 3.55 s). ``None``: run the batch as one (the main
    thread propagates, the workers build).

    Why: the waves of a batch never interact, and in the one-batch pipeline the main thread's propagation was the
    critical path on 2 cores (au-baseline-cpu's exit-wave stage: 2.5 of its 3.4 s, with the second core idle
    whenever the builders ran ahead); per-wave streams keep both cores on the whole work. The waves are the same
    bytes either way (every plane is gridded, transformed and propagated on its own on the CPU)."""
    if workers < 2 or len(specimens) < 2:
        return None
    cost = []
    for s in specimens:
        z = np.asarray(s.positions, dtype=np.float64).reshape(-1, 3)[:, 2]
        cost.append(len(np.unique(_slice_index(z, dz, n_slices))))
    n = min(workers + 1, len(specimens))
    load = [0] * n
    streams: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(specimens)), key=lambda i: (-cost[i], i)):
        k = min(range(n), key=lambda k: (load[k], k))
        streams[k].append(i)
        load[k] += max(cost[i], 1)
    return [sorted(m) for m in streams if m]


def _multislice_batch(specimens: Sequence[_Specimen], cell: np.ndarray, grid: Grid, n_slices: int,
                      dz: float, tables: _Tables, max_memory: int,
                      antialias_transmission: bool = False, pipeline: bool = True) -> torch.Tensor:
    device = tables.device
    nx, ny = grid.gpts
    n_batch = len(specimens)
    sigma = interaction_parameter(tables.energy)

    unique_z, species = _species(specimens)
    symbols = [chemical_symbols[int(z)] for z in unique_z]
    n_species = len(symbols)
    if species.size == 0:
        return torch.ones((n_batch, nx, ny), dtype=torch.complex64, device=device)
    forms = tables.form_factors(symbols) * sigma  # phase multiplier: σ v̂

    # coordinates as contiguous columns (row gathers of (N, 3) float64 cost ≈ 10× more on a million atoms)
    rows = [np.asarray(s.positions, dtype=np.float64).reshape(-1, 3) for s in specimens]
    x, y, z = (np.concatenate([r[:, c] for r in rows]) for c in range(3))
    del rows
    # periodic in x and y only: along the beam an atom at z = Lz (or a phonon displacement past a face)
    # belongs to the first/last slice, never to the other end of the specimen
    for column, length in ((x, cell[0]), (y, cell[1])):
        outside = np.flatnonzero(~((column >= 0.0) & (column < length)))  # mod(v, L) = v exactly on [0, L)
        if outside.size:
            wrapped = np.mod(column[outside], length)
            wrapped[wrapped >= length] = 0.0  # mod can round up to L
            column[outside] = wrapped
    member = np.repeat(np.arange(n_batch), [len(s.numbers) for s in specimens])
    slice_index = _slice_index(z, dz, n_slices)
    del z

    # plane = (slice, member, species); target = (slice, member); sort atoms slice-major
    plane_key = (slice_index * n_batch + member) * n_species + species
    order = _stable_argsort(plane_key)
    plane_key = plane_key[order]
    positions = np.stack((x[order], y[order]), axis=1)
    del x, y, order
    plane_start = np.concatenate(([0], np.flatnonzero(plane_key[1:] != plane_key[:-1]) + 1, [len(plane_key)]))
    planes = plane_key[plane_start[:-1]]
    plane_slice = planes // (n_batch * n_species)
    plane_target = planes // n_species  # = slice * n_batch + member
    plane_species = planes % n_species
    nonempty = np.unique(plane_slice)

    plane_bytes, target_bytes = _chunk_bytes(grid, tables.oversampling)
    # memory of each non-empty slice: its (member, species) planes and its (member) targets
    slice_planes = np.bincount(np.searchsorted(nonempty, plane_slice), minlength=len(nonempty))
    slice_targets = np.bincount(np.searchsorted(nonempty, np.unique(plane_target) // n_batch),
                                minlength=len(nonempty))
    slice_bytes = slice_planes * plane_bytes + slice_targets * target_bytes
    workers = _pipeline_workers(device) if pipeline else 0
    budget = max_memory / (workers + 1)  # chunks in flight at once: one being consumed + one per worker
    # small chunks on a CPU stream (one slice: cache-sized planes; batched real FFTs of many 640² planes ran
    # 1.7× slower per plane); with ≥ 4 threads (threaded ops) and on CUDA, chunks as large as the budget allows
    capped = workers > 0 or (_host_kernels(device) and (not pipeline or torch.get_num_threads() == 1))
    chunks = []
    i = 0
    while i < len(nonempty):
        j = i + 1  # grow the chunk of non-empty slices while it fits the memory budget
        while j < len(nonempty) and slice_bytes[i:j + 1].sum() <= budget and (not capped or j - i < _CHUNK_CAP):
            j += 1
        p0 = int(np.searchsorted(plane_slice, nonempty[i]))
        p1 = int(np.searchsorted(plane_slice, nonempty[j - 1], side="right"))
        chunks.append((nonempty[i:j], p0, p1))
        i = j
    # the atoms in fine-grid units, their planes and their planes' targets, on the device once: per-chunk copies
    # from host memory would each wait for the device's queue (CUDA), serialising host and device work
    u, atom_plane = _atoms_on_device(positions, plane_start, tables)
    target_rank = np.unique(plane_target, return_inverse=True)[1]  # plane -> index of its target (sorted)
    target_rank_device = torch.as_tensor(target_rank, device=device)
    local = threading.local()

    def build(item):
        _, p0, p1 = item
        if not hasattr(local, "workspace"):
            local.workspace = {}
        a0, a1 = int(plane_start[p0]), int(plane_start[p1])
        return _transmission(u[a0:a1], atom_plane[a0:a1] - p0, plane_species[p0:p1], plane_target[p0:p1],
                             target_rank_device[p0:p1] - int(target_rank[p0]), forms, tables, local.workspace,
                             antialias_transmission)

    # the waves as groups of planes (single planes on the CPU: see spectra.plane_groups); each FFT returns a
    # fresh tensor that replaces its group (an ``out=`` argument costs a copy of the result)
    parts = plane_groups(n_batch, (nx, ny), device)
    step = parts[0].stop - parts[0].start
    waves = [torch.ones((p.stop - p.start, nx, ny), dtype=torch.complex64, device=device) for p in parts]
    # propagation each wave owes since its last non-empty slice: a wave crosses the slices that are empty for
    # it (e.g. the substrate's slices for a particles-only wave batched with its scene) in one step
    owed = np.zeros(n_batch, dtype=np.int64)
    started = np.zeros(n_batch, dtype=bool)  # not yet: still the plane wave, which propagation leaves as is
    with _transmission_stream(build, chunks, workers) as stream:
        for (chunk, _, _), (t_parts, targets) in zip(chunks, stream, strict=True):
            t_step = len(t_parts[0])
            for sl in chunk:
                members = targets[targets // n_batch == sl] % n_batch
                lo = int(np.searchsorted(targets, sl * n_batch))
                _propagate(waves, step, members[started[members]], owed, dz, tables)
                with _phase("propagation"):
                    if len(waves) == 1 and len(t_parts) == 1 and len(members) == n_batch:
                        waves[0].mul_(t_parts[0][lo:lo + n_batch])
                    else:  # in place, wave by wave (advanced indexing would copy both stacks)
                        for j, m in enumerate(members.tolist()):
                            i = lo + j
                            waves[m // step][m % step].mul_(t_parts[i // t_step][i % t_step])
                started[members] = True
                owed[members] = 0
                k = int(np.searchsorted(nonempty, sl))
                owed += int((nonempty[k + 1] if k + 1 < len(nonempty) else n_slices) - sl)
            del t_parts
    _propagate(waves, step, np.flatnonzero(started), owed, dz, tables)
    return waves[0] if len(waves) == 1 else torch.cat(waves)


def _propagate(waves: list[torch.Tensor], step: int, members: np.ndarray, owed: np.ndarray, dz: float,
               tables: _Tables) -> None:
    """Propagate the waves ``members`` (indices into the batch; wave m is ``waves[m // step][m % step]``) by the
    slices each owes (``owed[m]`` × Δz, one Fresnel step P(owed·Δz)·A^owed each) and set what they owe to 0.
    A group of waves whose members all owe the same goes through one FFT pair."""
    members = members[owed[members] > 0]
    for g in np.unique(members // step).tolist():
        in_g = members[members // step == g]
        part = waves[g]
        with _phase("propagation", fft2=2 * len(in_g)):
            if len(in_g) == part.shape[0] and len(np.unique(owed[in_g])) == 1:
                b = torch.fft.fft2(part)
                b.mul_(tables.propagator(int(owed[in_g[0]]), dz))
                waves[g] = torch.fft.ifft2(b)
            else:
                for m in in_g.tolist():
                    b = torch.fft.fft2(part[m % step])
                    b.mul_(tables.propagator(int(owed[m]), dz))
                    part[m % step] = torch.fft.ifft2(b)
    owed[members] = 0


CPU_PIPELINE = True
_CHUNK_CAP = 1  # non-empty slices per pipelined chunk (one slice: smallest working set per worker; 1.1–1.2× faster than 4)
"""On CPU with 2–3 torch threads, build the transmission functions of the next slice chunks in worker
threads (one single-threaded stream per core) while the main thread propagates the waves."""


def _host_kernels(device: torch.device) -> bool:
    """Whether the transmission functions take the CPU's kernels (numpy's cos/sin, one inverse real FFT per plane,
    the worker-thread pipeline) rather than an accelerator's (torch's cos/sin, batched transforms, no pipeline).
    The one switch between them: a test runs the accelerator's branch on the CPU through it."""
    return device.type == "cpu"


def _pipeline_workers(device: torch.device) -> int:
    if not CPU_PIPELINE or not _host_kernels(device):
        return 0
    n = torch.get_num_threads()
    return n if 2 <= n <= 3 else 0  # few cores: streams beat threaded FFTs; many cores: threaded ops


@contextlib.contextmanager
def _transmission_stream(build, chunks, workers: int):
    """Yield an iterator of ``build(chunk)`` results in order; with ``workers`` > 0 they are computed
    ahead in a thread pool (torch ops release the GIL) with torch intra-op threads set to 1."""
    if workers == 0:
        yield (build(c) for c in chunks)
        return
    with torch_threads(1):
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hrtem-transmission",
                                  initializer=single_threaded_torch)
        try:
            def ordered():
                pending: deque = deque()
                todo = iter(chunks)
                for c in todo:
                    pending.append(pool.submit(build, c))
                    if len(pending) >= workers:
                        break
                while pending:
                    result = pending.popleft().result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.append(pool.submit(build, nxt))
                    yield result

            yield ordered()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _species(specimens: Sequence[_Specimen]) -> tuple[np.ndarray, np.ndarray]:
    """The sorted atomic numbers present and every atom's index into them (N,) int64, specimens concatenated.
    Specimens that share their ``numbers`` (the frozen-phonon configurations of a structure) are looked up once."""
    distinct: dict[int, np.ndarray] = {}
    for s in specimens:
        if id(s.numbers) not in distinct:
            distinct[id(s.numbers)] = np.asarray(s.numbers, dtype=np.int64).ravel()
    if not distinct:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    unique_z = np.unique(np.concatenate([np.unique(v) for v in distinct.values()]))
    index = {k: np.searchsorted(unique_z, v) for k, v in distinct.items()}
    return unique_z, np.concatenate([index[id(s.numbers)] for s in specimens])


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of non-negative integer keys, by radix sort where they fit 32 bits
    (numpy's stable sort is a radix sort for 16-bit integers: one pass, or two least-significant first, each
    O(n) instead of a merge sort's O(n log n); the same permutation)."""
    if keys.size == 0 or keys.min() < 0 or keys.max() >= 1 << 32:
        return np.argsort(keys, kind="stable")
    if keys.max() < 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    order = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return order[np.argsort((keys[order] >> 16).astype(np.uint16), kind="stable")]


def _atoms_on_device(positions: np.ndarray, plane_offsets: np.ndarray, tables: _Tables) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """The atoms ``positions`` (Å, sorted by plane, plane p owning rows ``plane_offsets[p]:plane_offsets[p+1]``) as
    fine-grid coordinates (N, 2) float64 and their plane indices (N,) int64, on the tables' device."""
    n_planes = len(plane_offsets) - 1
    atom_plane = torch.as_tensor(np.repeat(np.arange(n_planes), np.diff(plane_offsets)), device=tables.device)
    scale = np.asarray(tables.fine) / np.asarray(tables.grid.extent)
    return torch.as_tensor(positions[:, :2] * scale, device=tables.device), atom_plane


def _gridded_spectrum(positions: np.ndarray, plane_offsets: np.ndarray, tables: _Tables,
                      workspace: dict | None = None) -> torch.Tensor:
    """Φ̂x Φ̂y S_p(k) on the simulation grid's rfft band for each plane p: (P, nx, ny//2+1) complex64.

    Plane p holds the atoms ``positions[plane_offsets[p]:plane_offsets[p+1]]`` (Å). Each atom is spread
    over ``width``² fine-grid pixels with the separable kernel φ (scatter-add), then one real FFT per plane.
    """
    u, atom_plane = _atoms_on_device(positions, plane_offsets, tables)
    return _gridded_spectrum_of(u, atom_plane, len(plane_offsets) - 1, tables, workspace)


def _gridded_spectrum_of(u: torch.Tensor, atom_plane: torch.Tensor, n_planes: int, tables: _Tables,
                         workspace: dict | None = None) -> torch.Tensor:
    """:func:`_gridded_spectrum` of atoms already on the device (``u``, ``atom_plane``: see
    :func:`_atoms_on_device`; plane indices 0..``n_planes``-1)."""
    device = tables.device
    grid = tables.grid
    mx, my = tables.fine
    size = n_planes * mx * my
    fine = None if workspace is None else workspace.get("fine")
    if fine is None or fine.numel() < size:  # reuse the scratch grid: fresh pages cost more than zeroing
        fine = torch.zeros(size, dtype=torch.float32, device=device)
        if workspace is not None:
            workspace["fine"] = fine
    else:
        fine = fine[:size]
        fine.zero_()
    with _phase("gridding"):
        _scatter(fine, u, atom_plane, tables)
    with _phase("structure_factors", rfft2=n_planes):
        spectrum = torch.fft.rfft2(fine.view(n_planes, mx, my))
    del fine
    if tables.fine != grid.gpts:
        spectrum = spectrum[:, tables.rows, : tables.ncols]
    return spectrum


def _scatter(fine: torch.Tensor, u: torch.Tensor, atom_plane: torch.Tensor, tables: _Tables) -> None:
    """Spread each atom (fine-grid coordinates ``u``) over width² pixels of its plane in ``fine`` (flat)."""
    device = tables.device
    mx, my = tables.fine
    width = tables.width
    offs = torch.arange(width, device=device)
    for a0 in range(0, len(u), _ATOM_BLOCK):
        ub = u[a0:a0 + _ATOM_BLOCK]
        base = torch.floor(ub - width / 2.0).long() + 1  # (n, 2) first covered fine pixel
        jx = base[:, 0:1] + offs  # (n, w), unwrapped
        jy = base[:, 1:2] + offs
        wx = _es_kernel((jx - ub[:, 0:1]).float(), width)
        wy = _es_kernel((jy - ub[:, 1:2]).float(), width)
        flat = (atom_plane[a0:a0 + _ATOM_BLOCK, None, None] * (mx * my)
                + (jx % mx)[:, :, None] * my + (jy % my)[:, None, :])
        fine.index_add_(0, flat.reshape(-1), (wx[:, :, None] * wy[:, None, :]).reshape(-1))


def _transmission(u: torch.Tensor, atom_plane: torch.Tensor, plane_species: np.ndarray,
                  plane_target: np.ndarray, target_index: torch.Tensor, forms: torch.Tensor, tables: _Tables,
                  workspace: dict | None = None, antialias: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """Transmission functions exp(iσv) of the (slice, member) targets of one chunk, band-limited to the
    antialias aperture when ``antialias``.

    ``u``, ``atom_plane``: the chunk's atoms (see :func:`_atoms_on_device`; plane indices from 0);
    ``target_index``: each plane's index among the chunk's sorted targets (on the device). Returns the
    transmission functions of the T sorted targets as consecutive groups of planes (list of (n_g, nx, ny)
    complex64: single planes on the CPU, else see ``spectra.plane_groups``) and the sorted target keys.
    """
    device = tables.device
    nx, ny = tables.grid.gpts
    spectrum = _gridded_spectrum_of(u, atom_plane, len(plane_species), tables, workspace)
    targets = np.unique(plane_target)
    with _phase("potential"):
        if len(forms) == 1:
            spectrum.mul_(forms[0])  # one species: broadcast, no gathered copy of the form factors
        else:
            for p, sp in enumerate(plane_species.tolist()):
                spectrum[p].mul_(forms[sp])
        if len(targets) == len(plane_target):  # one element per (slice, member): nothing to sum
            vk = spectrum
        else:
            vk = torch.zeros((len(targets), nx, ny // 2 + 1), dtype=torch.complex64, device=device)
            vk.index_add_(0, target_index, spectrum)
        del spectrum
    # on the CPU one inverse real FFT per plane whatever its size: MKL's batched c2r transform differs from one at a
    # time in the last bit on some CPUs (an AVX-512 Xeon, 2026-12-01; its r2c and c2c transforms do not), which
    # would make a wave's bytes depend on the waves batched with it
    host = _host_kernels(device)
    groups = ([slice(i, i + 1) for i in range(len(targets))] if host
              else plane_groups(len(targets), (nx, ny), device))
    shape = (groups[0].stop - groups[0].start, nx, ny)
    scratch = (workspace if workspace is not None else {}).setdefault("transmission", {})
    if scratch.get("shape") != shape:  # per-thread buffers, reused across chunks
        scratch.update(shape=shape, cos=torch.empty(shape, device=device), sin=torch.empty(shape, device=device))
    t_parts = []
    for g in groups:
        n = g.stop - g.start
        cos, sin = scratch["cos"][:n], scratch["sin"][:n]
        with _phase("potential", rfft2=n):
            phase = torch.fft.irfft2(vk[g], s=(nx, ny))  # σ v_z
        with _phase("transmission", fft2=2 * n if antialias else 0):
            # contiguous cos and sin, then interleaved: 2-3× faster than writing into the strided real/imaginary
            # views of a complex tensor; on the CPU numpy's (the same bytes with AVX2 and AVX-512): 1.7 vs 4.1 ms
            # for both at 1280², one thread
            if host:
                ph = phase.numpy()
                np.cos(ph, out=cos.numpy())
                np.sin(ph, out=sin.numpy())
            else:
                torch.cos(phase, out=cos)
                torch.sin(phase, out=sin)
            t = torch.complex(cos, sin)
            if antialias:
                tk = torch.fft.fft2(t)
                tk.mul_(tables.aperture)
                t = torch.fft.ifft2(tk)
                del tk
            t_parts.append(t)
        del phase, t
    return t_parts, targets


def projected_potential(positions: np.ndarray, numbers: np.ndarray, cell: Sequence[float],
                        sampling: float = 0.1, parametrization: str = "lobato",
                        structure_factors: str = "nufft") -> np.ndarray:
    """Projected potential v_z [V·Å] (nx, ny) of all given atoms in one slice (infinite projection).

    Same construction as the multislice engine, without the transmission step; for tests/inspection.
    """
    device = torch.device("cpu")
    grid = Grid.from_sampling(cell, sampling)
    tables = _tables(grid, 300e3, parametrization, device, structure_factors)
    numbers = np.asarray(numbers)
    unique_z = np.unique(numbers)
    forms = tables.form_factors([chemical_symbols[int(z)] for z in unique_z])
    species = np.searchsorted(unique_z, numbers)
    order = np.argsort(species, kind="stable")
    pos = np.mod(np.asarray(positions, dtype=np.float64)[order], np.asarray(cell, dtype=np.float64))
    planes, start = np.unique(species[order], return_index=True)
    spectrum = _gridded_spectrum(pos, np.append(start, len(pos)), tables)
    vk = (spectrum * forms[torch.as_tensor(planes)]).sum(0)
    return torch.fft.irfft2(vk, s=grid.gpts).numpy()


def to_host(waves: torch.Tensor) -> np.ndarray:
    """``waves`` as a numpy array in host memory: from an accelerator through page-locked memory (a pageable
    copy of 16 waves at 1280² took 166 ms on an H200, several times the simulation's device time)."""
    if waves.device.type != "cuda":
        return waves.cpu().numpy()
    try:
        host = torch.empty(waves.shape, dtype=waves.dtype, pin_memory=True)
    except RuntimeError:  # page-locked memory is scarce on some hosts: the pageable copy still works
        return waves.cpu().numpy()
    host.copy_(waves)
    return host.numpy()


def waves_from_arrays(positions: np.ndarray, numbers: np.ndarray) -> list[_Specimen]:
    """Specimens from (B, N, 3) or (N, 3) positions and (N,) numbers."""
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 2:
        positions = positions[None]
    return [_Specimen(p, np.asarray(numbers)) for p in positions]


__all__ = ["Grid", "antialias_aperture", "fresnel_propagator", "multislice", "projected_potential",
           "memory_estimate", "profile_phases", "resolve_device", "slicing", "waves_from_arrays", "DEFAULT_MAX_MEMORY",
           "default_max_memory", "to_host"]

