"""Exit waves -> HRTEM images: CTF with envelopes, phonon averaging, Fourier cropping, detector, dose.

One batched torch path (:func:`image_batch`) serves the offline dataset build and on-the-fly imaging in
training, on CPU or CUDA with the same code; :func:`image_intensity` and :func:`render_image` are the
numpy-in/numpy-out wrappers of the public contract.

Per image b (conditions may differ within a batch):

1. Ψ_p(k) = F[ψ_p] for each frozen-phonon configuration p; H_b(k) from :mod:`.ctf` (aberrations,
   aperture, temporal and spatial envelopes, quasi-coherent as abTEM).
2. I_b = (1/P) Σ_p |F⁻¹[Ψ_p H_b]|² — intensities average incoherently over phonon configurations; the
   intensity of a vacuum wave (|ψ| = 1) is 1.
3. Fourier crop of I_b to the detector pixel size (:mod:`.resample`, no aliasing, mean kept).
4. With a dose: counts = MTF ⊛ Poisson(I_b · dose · pixel area) + read noise (:mod:`.detector`), in
   electrons per pixel; without a dose the image stays in units of the vacuum intensity (MTF applied).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..device import resolve_device
from ..errors import InputError
from ..spectra import crop_spectrum
from ._common import as_pair, complex_tensor, phonon_stack
from .aberrations import POLAR_ALIASES, POLAR_SYMBOLS, aberration_coefficients, canonical_name
from .ctf import transfer_function
from .detector import mtf_rfft, poisson_counts, validate_mtf
from .resample import interpolate, resampled_sampling, resampled_shape

_SCALAR_KEYS = ("semiangle_cutoff", "focal_spread", "angular_spread", "dose", "read_noise")


def _as_batch(value, batch: int, device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64, device=device).reshape(-1)
    if t.shape[0] == 1:
        return t.expand(batch)
    if t.shape[0] != batch:
        raise InputError(f"conditions.{name}: expected {batch} values (one per image), got {t.shape[0]}")
    return t


def _coefficients(conditions: Mapping[str, object], batch: int, device) -> dict[str, torch.Tensor]:
    coeffs = {k: torch.zeros(batch, dtype=torch.float64, device=device) for k in POLAR_SYMBOLS}
    for key, value in conditions.items():
        if key in _SCALAR_KEYS:
            continue
        v = _as_batch(value, batch, device, key)
        if key == "defocus" or key == "zero_defocus":
            coeffs["C10"] = coeffs["C10"] - v
        elif key in POLAR_SYMBOLS or key in POLAR_ALIASES:
            sym = canonical_name(key)
            coeffs[sym] = coeffs[sym] + v
        else:
            raise InputError(f"conditions: unknown key {key!r}")
    for k, v in coeffs.items():
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"conditions.{k}: must be finite")
    return coeffs


def image_batch(
    waves: torch.Tensor,
    sampling: float | Sequence[float],
    energy: float,
    conditions: Mapping[str, object],
    pixel_size: float | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    mtf: Mapping[str, float] | None = None,
    soft_aperture: bool = True,
) -> torch.Tensor:
    """Image a batch of exit waves, one set of conditions per image; float32 (B, m_x, m_y), same device.

    Parameters
    ----------
    waves: complex (B, P, n_x, n_y) (P frozen-phonon configurations) or (B, n_x, n_y), vacuum |ψ| = 1.
    sampling: Å per pixel of ``waves`` (number or (s_x, s_y)).
    energy: beam energy, eV.
    conditions: name -> scalar or (B,) values. ``defocus`` [Å] (= −C10, > 0 underfocus) plus optional
        ``zero_defocus`` [Å] (added to defocus); ``Cs`` [Å] and any Krivanek ``C_nm`` [Å] / ``phi_nm``
        [rad] or abTEM alias; ``semiangle_cutoff`` [mrad] (NaN/inf = no aperture); ``focal_spread`` [Å];
        ``angular_spread`` [mrad]; ``dose`` [e/Å²] (NaN or ≤ 0 = noise-free); ``read_noise`` [counts].
    pixel_size: detector pixel size [Å]; ``None`` keeps the simulation grid.
    generator: torch generator on the waves' device for the shot/read noise (seeded -> reproducible).
    mtf: detector MTF parameters (see :mod:`.detector`), the same for the batch; ``None`` = perfect.

    Returns counts per pixel for images with a dose, intensity (vacuum = 1) for the others.
    """
    if not isinstance(waves, torch.Tensor):
        raise InputError("waves: image_batch expects a torch tensor (use image_intensity for numpy)")
    if waves.ndim == 3:
        waves = waves[:, None]
    if waves.ndim != 4:
        raise InputError(f"waves: expected (B, P, nx, ny) or (B, nx, ny), got shape {tuple(waves.shape)}")
    if not (math.isfinite(energy) and energy > 0):
        raise InputError(f"energy: must be > 0 eV, got {energy}")
    device = waves.device
    waves = complex_tensor(waves, device)
    batch, _, nx, ny = waves.shape
    s = as_pair(sampling, "sampling")
    coeffs = _coefficients(conditions, batch, device)
    get = conditions.get
    H = transfer_function(
        (nx, ny),
        s,
        energy,
        coeffs,
        semiangle_cutoff=_as_batch(get("semiangle_cutoff", math.inf), batch, device, "semiangle_cutoff"),
        focal_spread=_as_batch(get("focal_spread", 0.0), batch, device, "focal_spread"),
        angular_spread=_as_batch(get("angular_spread", 0.0), batch, device, "angular_spread"),
        soft_aperture=soft_aperture,
        device=device,
    )
    spec = torch.fft.fft2(waves)
    spec.mul_(H[:, None])  # in place: the batch of P waves is the largest array here
    psi = torch.fft.ifft2(spec, out=spec)
    intensity = torch.view_as_real(psi).square_().sum(dim=-1).mean(dim=1)
    del psi, spec

    dose = _as_batch(get("dose", math.nan), batch, device, "dose").to(torch.float32)
    noisy = torch.isfinite(dose) & (dose > 0)
    mtf = validate_mtf(mtf)
    if pixel_size is not None:
        shape = resampled_shape((nx, ny), s, pixel_size)
        px = resampled_sampling((nx, ny), s, pixel_size)
    else:
        shape, px = (nx, ny), s
    any_noise = bool(noisy.any())
    if shape != (nx, ny) or (mtf is not None and not any_noise):
        spec = torch.fft.rfft2(intensity)
        spec = crop_spectrum(spec, shape) * (shape[0] * shape[1] / (nx * ny))
        if mtf is not None and not any_noise:
            spec = spec * mtf_rfft(shape, mtf, device)
        intensity = torch.fft.irfft2(spec, s=shape)
    if not any_noise:
        return intensity
    image = poisson_counts(intensity, dose, px[0] * px[1], generator)
    if mtf is not None:
        image = torch.fft.irfft2(torch.fft.rfft2(image) * mtf_rfft(shape, mtf, device), s=shape)
    read = _as_batch(get("read_noise", 0.0), batch, device, "read_noise").to(torch.float32)
    if bool((read > 0).any()):
        noise = torch.randn(image.shape, generator=generator, device=device)
        image = image + torch.where(noisy, read, torch.zeros_like(read))[:, None, None] * noise
    return image


def _waves_4d(waves, device) -> torch.Tensor:
    return phonon_stack(waves, device, "waves")[None]


def image_intensity(
    waves,
    sampling: float | Sequence[float] = 0.1,
    energy: float = 300e3,
    defocus: float = 0.0,
    Cs: float = 0.0,
    aberrations: Mapping[str, float] | None = None,
    semiangle_cutoff: float | None = None,
    focal_spread: float = 0.0,
    angular_spread: float = 0.0,
    device: str | None = "cpu",
) -> np.ndarray:
    """Phonon-averaged HRTEM image intensity on the simulation grid; float32 (nx, ny).

    ``waves``: complex (nx, ny) or (phonons, nx, ny), vacuum |ψ| = 1 -> vacuum intensity 1.
    ``defocus`` [Å] = −C10 (> 0 underfocus), ``Cs`` = C30 [Å], ``aberrations`` extra Krivanek
    coefficients (e.g. ``{"C12": 20.0, "phi12": 0.3}``, Å and rad), ``semiangle_cutoff`` [mrad],
    ``focal_spread`` [Å, 1/e half-width], ``angular_spread`` [mrad]. Equals abTEM's
    ``Waves.apply_ctf(CTF(...)).intensity()`` (soft aperture edge), averaged over phonons.
    """
    dev = resolve_device(device)
    coeffs = aberration_coefficients(defocus, Cs, aberrations)
    cond: dict[str, object] = {k: v for k, v in coeffs.items() if v != 0.0}
    cond.update(
        semiangle_cutoff=math.inf if semiangle_cutoff is None else float(semiangle_cutoff),
        focal_spread=float(focal_spread),
        angular_spread=float(angular_spread),
    )
    _check_conditions(cond)
    out = image_batch(_waves_4d(waves, dev), sampling, energy, cond)
    return out[0].cpu().numpy().astype(np.float32)


def _check_conditions(cond: Mapping[str, object]) -> None:
    sa = cond.get("semiangle_cutoff")
    if sa is not None and not (isinstance(sa, int | float) and (sa > 0 or math.isnan(sa))):
        raise InputError(f"semiangle_cutoff: must be > 0 mrad, got {sa}")
    for key in ("focal_spread", "angular_spread"):
        v = cond.get(key, 0.0)
        if v is not None and not (math.isfinite(float(v)) and float(v) >= 0):  # type: ignore[arg-type]
            raise InputError(f"{key}: must be finite and >= 0, got {v}")


def conditions_to_tensors(
    conditions: Sequence[Mapping[str, object]],
    zero_defocus: float | Sequence[float] = 0.0,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-image condition dicts (from :func:`.conditions.sample_imaging_conditions`) -> the (B,) tensors
    :func:`image_batch` takes. ``defocus`` in the dicts is relative to ``zero_defocus`` (per structure)."""
    batch = len(conditions)
    zd = (
        [float(zero_defocus)] * batch
        if isinstance(zero_defocus, int | float)
        else [float(z) for z in zero_defocus]
    )
    if len(zd) != batch:
        raise InputError(f"zero_defocus: expected {batch} values, got {len(zd)}")
    rows = []
    for c, z in zip(conditions, zd, strict=True):
        coeffs = aberration_coefficients(
            float(c.get("defocus", 0.0)) + z, float(c.get("Cs", 0.0)), c.get("aberrations")
        )  # type: ignore[arg-type]
        dose = c.get("dose")
        sa = c.get("semiangle_cutoff")
        rows.append(
            {
                **coeffs,
                "semiangle_cutoff": math.inf if sa is None else float(sa),  # type: ignore[arg-type]
                "focal_spread": float(c.get("focal_spread", 0.0)),  # type: ignore[arg-type]
                "angular_spread": float(c.get("angular_spread", 0.0)),  # type: ignore[arg-type]
                "dose": math.nan if dose is None else float(dose),  # type: ignore[arg-type]
                "read_noise": float(c.get("read_noise", 0.0)),  # type: ignore[arg-type]
            }
        )
    out = {}
    for key in rows[0]:
        out[key] = torch.tensor([r[key] for r in rows], dtype=torch.float64, device=device)
    # C10 carries the defocus; drop the all-zero coefficients to skip their terms.
    return {k: v for k, v in out.items() if k not in POLAR_SYMBOLS or bool((v != 0).any())}


def render_image(
    waves,
    sampling: float | Sequence[float],
    energy: float,
    conditions: Mapping[str, object],
    zero_defocus: float,
    seed: int,
    device: str | None = "cpu",
) -> np.ndarray:
    """One detector image, float32 (m_x, m_y) at ``conditions["pixel_size"]`` (grid of
    :func:`.resample.resampled_shape`), with coherence envelopes, MTF and dose noise applied. With
    ``conditions["recorded_pixel_size"]`` the image is recorded (Fourier crop, MTF, dose noise) on that
    detector grid and then resampled to ``pixel_size`` with :func:`.resample.interpolate`.

    ``conditions``: one dict of :func:`.conditions.sample_imaging_conditions` (``defocus`` relative to
    ``zero_defocus`` [Å]). Counts per pixel when ``conditions["dose"]`` is set, else intensity (vacuum = 1).
    Same inputs, seed and device -> identical bytes.
    """
    dev = resolve_device(device)
    if "pixel_size" not in conditions:
        raise InputError("conditions.pixel_size: missing")
    _check_conditions(conditions)
    cond = conditions_to_tensors([conditions], zero_defocus, dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) & ((1 << 63) - 1))
    w = _waves_4d(waves, dev)
    pixel_size = float(conditions["pixel_size"])  # type: ignore[arg-type]
    recorded = conditions.get("recorded_pixel_size")
    recorded = pixel_size if recorded is None else float(recorded)  # type: ignore[arg-type]
    if not (math.isfinite(recorded) and recorded > 0):
        raise InputError(f"conditions.recorded_pixel_size: must be > 0 Å, got {recorded}")
    out = image_batch(w, sampling, energy, cond, pixel_size=recorded, generator=gen,
                      mtf=conditions.get("mtf") or None)  # type: ignore[arg-type]
    if recorded != pixel_size:  # recorded on a coarser/finer detector, delivered on the labels' grid
        out = interpolate(out, resampled_shape(w.shape[-2:], as_pair(sampling, "sampling"), pixel_size))
    return out[0].cpu().numpy().astype(np.float32)
