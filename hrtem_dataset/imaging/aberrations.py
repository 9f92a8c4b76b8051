"""Phase aberration function χ(k) in Krivanek polar notation, exactly as abTEM.

Conventions (identical to ``abtem.transfer.Aberrations``, abTEM ≥ 1.0):

- Scattering angle α = λ|k| (rad, small-angle), azimuth φ = atan2(k_y, k_x) with arrays indexed [x, y].
- Coefficients C_nm in Å, angles φ_nm in rad; the wave in reciprocal space is multiplied by exp(−iχ) with

      χ(α, φ) = 2π/λ · Σ_nm  α^(n+1)/(n+1) · C_nm · cos(m (φ − φ_nm))

  i.e. ½α²(C10 + C12 cos 2(φ−φ12)) + ⅓α³(C21 cos(φ−φ21) + C23 cos 3(φ−φ23))
  + ¼α⁴(C30 + C32 cos 2(φ−φ32) + C34 cos 4(φ−φ34)) + … up to fifth order (C56).
- **defocus = −C10** (positive defocus = underfocus). exp(−iχ) with C10 = −Δf equals free-space
  propagation of the exit wave by −Δf, i.e. a positive defocus images a plane Δf *above* the exit plane.
- ``Cs`` is an alias of C30; abTEM's other aliases (astigmatism = C12, coma = C21, ...) are accepted.

All functions are batched over a leading axis B (one set of coefficients per image) and run on the
device of their inputs. χ = (2π/λ)·W·F is one matrix product of per-image weights W (B, T) with a grid
basis F (T, nx·ny) of α^(n+1)/(n+1)·{cos, sin}(mφ) (cacheable per grid), evaluated in float64 (phases
reach 10⁴–10⁵ rad at high angles with Cs = 1 mm, where float32 would lose ~10⁻² rad).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from ..errors import InputError
from ..simulation.physics import wavelength

#: All polar coefficients, in abTEM's order.
POLAR_SYMBOLS: tuple[str, ...] = (
    "C10", "C12", "phi12",
    "C21", "phi21", "C23", "phi23",
    "C30", "C32", "phi32", "C34", "phi34",
    "C41", "phi41", "C43", "phi43", "C45", "phi45",
    "C50", "C52", "phi52", "C54", "phi54", "C56", "phi56",
)  # fmt: skip

#: abTEM's names of the non-round aberrations -> their ``nm`` (``NAME`` is C_nm, ``NAME_angle`` is phi_nm).
_NAMED_ABERRATIONS: dict[str, str] = {
    "astigmatism": "12", "astigmatism3": "32", "astigmatism5": "52", "coma": "21", "coma4": "41",
    "trefoil": "23", "trefoil4": "43", "quadrafoil": "34", "quadrafoil5": "54", "pentafoil": "45",
    "hexafoil": "56",
}  # fmt: skip

#: abTEM aliases (``defocus`` is handled separately: it is −C10): ``Cs`` = C30, ``C5`` = C50 and the
#: ``NAME``/``NAME_angle`` pair of every named aberration.
POLAR_ALIASES: dict[str, str] = {"Cs": "C30", "C5": "C50"} | {
    alias: symbol
    for name, nm in _NAMED_ABERRATIONS.items()
    for alias, symbol in ((name, f"C{nm}"), (f"{name}_angle", f"phi{nm}"))
}

# (n, m) of each magnitude coefficient; n is the order in α^(n+1).
_TERMS: tuple[tuple[int, int], ...] = (
    (1, 0), (1, 2), (2, 1), (2, 3), (3, 0), (3, 2), (3, 4),
    (4, 1), (4, 3), (4, 5), (5, 0), (5, 2), (5, 4), (5, 6),
)  # fmt: skip


def canonical_name(name: str) -> str:
    """Alias -> polar symbol (``Cs`` -> ``C30``); raises :class:`InputError` for unknown names."""
    sym = POLAR_ALIASES.get(name, name)
    if sym not in POLAR_SYMBOLS:
        raise InputError(f"aberrations: unknown coefficient {name!r} (Krivanek C_nm / phi_nm or abTEM alias)")
    return sym


def aberration_coefficients(
    defocus: float = 0.0, Cs: float = 0.0, aberrations: Mapping[str, float] | None = None
) -> dict[str, float]:
    """All polar coefficients (Å, rad) from ``defocus`` (= −C10), ``Cs`` (= C30) and extra coefficients.

    ``aberrations`` may hold polar symbols or abTEM aliases; a ``C10`` there adds to −defocus, a
    ``C30`` adds to ``Cs``. Unknown names or non-finite values raise :class:`InputError`.
    """
    out = dict.fromkeys(POLAR_SYMBOLS, 0.0)
    for name, value in (aberrations or {}).items():
        if name == "defocus":
            out["C10"] -= float(value)
            continue
        sym = canonical_name(name)
        out[sym] += float(value)
    out["C10"] -= float(defocus)
    out["C30"] += float(Cs)
    for k, v in out.items():
        if not math.isfinite(v):
            raise InputError(f"aberrations: {k} must be finite, got {v}")
    return out


def polar_grid(
    gpts: tuple[int, int],
    sampling: tuple[float, float],
    wavelength: float,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scattering angle α = λ|k| [rad] and azimuth φ [rad] on the FFT grid (unshifted), float64 (nx, ny)."""
    kx = torch.fft.fftfreq(gpts[0], d=sampling[0], dtype=torch.float64, device=device)
    ky = torch.fft.fftfreq(gpts[1], d=sampling[1], dtype=torch.float64, device=device)
    alpha = torch.sqrt(kx[:, None] ** 2 + ky[None, :] ** 2) * wavelength
    phi = torch.atan2(ky[None, :], kx[:, None])
    return alpha, phi


def stack_coefficients(
    coefficients: Mapping[str, float | torch.Tensor | np.ndarray] | list[Mapping[str, float]],
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-image coefficient dicts (or a dict of (B,) arrays) -> dict of float64 (B,) tensors."""
    if isinstance(coefficients, list):
        return {
            k: torch.tensor([float(c.get(k, 0.0)) for c in coefficients], dtype=torch.float64, device=device)
            for k in POLAR_SYMBOLS
        }
    out = {}
    batch = None
    for k in POLAR_SYMBOLS:
        v = coefficients.get(k, 0.0)
        t = torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1)
        out[k] = t
        batch = t.shape[0] if batch is None or batch == 1 else batch
    return {k: v.expand(batch) if v.shape[0] == 1 else v for k, v in out.items()}


def used_terms(coeffs: Mapping[str, torch.Tensor]) -> tuple[tuple[int, int, str], ...]:
    """Basis terms (n, m, "c"|"s") needed for the coefficients that are non-zero for some image."""
    terms: list[tuple[int, int, str]] = []
    for n, m in _TERMS:
        if bool((coeffs[f"C{n}{m}"] != 0).any()):
            terms.append((n, m, "c"))
            if m:
                terms.append((n, m, "s"))
    return tuple(terms)


def basis(
    alpha: torch.Tensor, phi: torch.Tensor, terms: tuple[tuple[int, int, str], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid basis of χ and of its gradient, float64 (T, *alpha.shape):
    F_t = α^(n+1)/(n+1)·trig(mφ) and G_t = α^n·trig(mφ), trig = cos ("c") or sin ("s")."""
    shape = (len(terms), *alpha.shape)
    F = torch.empty(shape, dtype=torch.float64, device=alpha.device)
    G = torch.empty(shape, dtype=torch.float64, device=alpha.device)
    for i, (n, m, kind) in enumerate(terms):
        trig = 1.0 if m == 0 else (torch.cos(m * phi) if kind == "c" else torch.sin(m * phi))
        G[i] = alpha**n * trig
        F[i] = G[i] * alpha / (n + 1)
    return F, G


def weights(
    coeffs: Mapping[str, torch.Tensor], terms: tuple[tuple[int, int, str], ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image weights (B, T) of the basis: ``w`` for χ and ∂χ/∂α (with F and G), ``w_phi`` for
    α⁻¹∂χ/∂φ (with G), from cos(m(φ−φ_nm)) = cos mφ cos mφ_nm + sin mφ sin mφ_nm."""
    w, w_phi = [], []
    for n, m, kind in terms:
        c = coeffs[f"C{n}{m}"]
        if m == 0:
            w.append(c)
            w_phi.append(torch.zeros_like(c))
            continue
        angle = m * coeffs[f"phi{n}{m}"]
        cos, sin = torch.cos(angle), torch.sin(angle)
        if kind == "c":
            w.append(c * cos)
            w_phi.append(m / (n + 1) * c * sin)
        else:
            w.append(c * sin)
            w_phi.append(-m / (n + 1) * c * cos)
    batch = coeffs["C10"].shape[0]
    if not terms:
        empty = torch.zeros((batch, 0), dtype=torch.float64, device=coeffs["C10"].device)
        return empty, empty
    return torch.stack(w, dim=1), torch.stack(w_phi, dim=1)


def _contract(w: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """(B, T) · (T, *grid) -> (B, *grid) as one matrix product."""
    grid = F.shape[1:]
    if F.shape[0] == 0:
        return torch.zeros((w.shape[0], *grid), dtype=torch.float64, device=F.device)
    return (w @ F.reshape(F.shape[0], -1)).reshape(w.shape[0], *grid)


def chi(
    alpha: torch.Tensor, phi: torch.Tensor, coeffs: Mapping[str, torch.Tensor], wavelength: float
) -> torch.Tensor:
    """χ(α, φ) [rad], (B, *alpha.shape) float64 for (B,) coefficients (see module docstring)."""
    terms = used_terms(coeffs)
    F, _ = basis(alpha, phi, terms)
    w, _ = weights(coeffs, terms)
    return _contract(w, F) * (2 * math.pi / wavelength)


def chi_gradient(
    alpha: torch.Tensor, phi: torch.Tensor, coeffs: Mapping[str, torch.Tensor], wavelength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂χ/∂α, α⁻¹∂χ/∂φ) [rad/rad], each (B, *alpha.shape) float64 — the gradient of abTEM's spatial
    envelope."""
    terms = used_terms(coeffs)
    _, G = basis(alpha, phi, terms)
    w, w_phi = weights(coeffs, terms)
    scale = 2 * math.pi / wavelength
    return _contract(w, G) * scale, _contract(w_phi, G) * scale


def scherzer_defocus(Cs: float, energy: float) -> float:
    """Scherzer defocus √(3/2 · Cs · λ) [Å] (defocus convention, > 0 = underfocus, for Cs > 0)."""

    return math.copysign(math.sqrt(1.5 * abs(Cs) * wavelength(energy)), Cs)


def point_resolution(Cs: float, energy: float) -> float:
    """Scherzer point resolution (λ³ Cs / 6)^¼ [Å]."""

    return (wavelength(energy) ** 3 * abs(Cs) / 6) ** 0.25
