"""Isolated-atom projected potentials: Lobato (default) and Kirkland parametrizations.

Conventions (units throughout: Å, V, 1/Å for spatial frequency k = |k|, no 2π):

- ``scattering_factor(symbol, k2)``: the (non-relativistic, first Born) electron scattering factor
  f_e(k) in Å, with ``k2 = |k|²`` in 1/Å².
- ``projected_form_factor(symbol, k2)``: the 2-D Fourier transform of the infinitely projected
  potential, V̂(k) = C · f_e(k) in V·Å³, where C = h² / (2π m₀ e) = 2π a₀ e = 47.8776 V·Å². The
  projected potential of atoms at positions r_a in a periodic cell of area A is then
  v_z(r) = (1/A) Σ_k V̂(k) S(k) exp(2πi k·r) with the structure factor S(k) = Σ_a exp(−2πi k·r_a).
- ``projected_potential(symbol, r)``: the analytic real-space infinite projection v_z(r) in V·Å
  (the exit-wave phase of a thin slice is σ·v_z, σ = :func:`~.physics.interaction_parameter`).
- ``potential(symbol, r)``: the 3-D radial potential V(r) in V.

Closed forms (derived from the parametrised f_e by 2-D / 3-D inverse Fourier transforms):

- Lobato & Van Dyck (2014), f_e(k) = Σᵢ aᵢ (2 + bᵢk²) / (1 + bᵢk²)², five terms:
  v_z(r) = C Σᵢ aᵢ [ (2π/bᵢ) K₀(2πr/√bᵢ) + 2π² r K₁(2πr/√bᵢ) / bᵢ^{3/2} ],
  V(r) = C Σᵢ π² aᵢ / bᵢ^{3/2} (2/(βᵢ r) + 1) exp(−βᵢ r), βᵢ = 2π/√bᵢ.
- Kirkland (2010), f_e(k) = Σᵢ aᵢ/(k² + bᵢ) + cᵢ exp(−dᵢk²), three + three terms:
  v_z(r) = C Σᵢ [ 2π aᵢ K₀(2πr√bᵢ) + π (cᵢ/dᵢ) exp(−π²r²/dᵢ) ],
  V(r) = C Σᵢ [ π aᵢ exp(−2πr√bᵢ) / r + π^{3/2} cᵢ dᵢ^{−3/2} exp(−π²r²/dᵢ) ].

The coefficient tables (Z = 1..103) are published data, stored in ``hrtem_dataset/data/*.json``;
the parametrisation code here is this package's own.
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources

import numpy as np
from scipy.special import k0, k1

from ..errors import InputError
from .physics import E_CHARGE, M0, H

POTENTIAL_PREFACTOR = H**2 / (2.0 * math.pi * M0 * E_CHARGE) * 1e20
"""C = h²/(2π m₀ e) = 2π a₀ e in V·Å² (47.8776): converts f_e [Å] to a potential form factor."""

PARAMETRIZATIONS = ("lobato", "kirkland")


@cache
def _load_table(name: str) -> dict[str, np.ndarray]:
    text = resources.files("hrtem_dataset").joinpath("data", f"{name}.json").read_text()
    data = json.loads(text)["parameters"]
    return {symbol: np.asarray(p, dtype=np.float64) for symbol, p in data.items()}


class Parametrization:
    """Base class: a named table of per-element coefficients and closed-form functions."""

    name: str = ""
    shape: tuple[int, int] = (0, 0)

    def __init__(self) -> None:
        self.table = _load_table(self.name)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.table)

    def parameters(self, symbol: str) -> np.ndarray:
        try:
            return self.table[symbol]
        except KeyError:
            raise InputError(f"element {symbol!r}: no {self.name} parameters (Z = 1..103 available)") from None

    def scattering_factor(self, symbol: str, k2: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def projected_potential(self, symbol: str, r: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def potential(self, symbol: str, r: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def projected_form_factor(self, symbol: str, k2: np.ndarray) -> np.ndarray:
        """V̂(k) = C · f_e(k) [V·Å³]: 2-D Fourier transform of the infinitely projected potential."""
        return POTENTIAL_PREFACTOR * self.scattering_factor(symbol, k2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Lobato(Parametrization):
    """Lobato & Van Dyck, Acta Cryst. A70 (2014) 636: five-term fit valid to |k| = 12 1/Å."""

    name = "lobato"
    shape = (2, 5)

    def scattering_factor(self, symbol, k2):
        a, b = self.parameters(symbol)
        k2 = np.asarray(k2, dtype=np.float64)[..., None]
        bk2 = b * k2
        return (a * (2.0 + bk2) / (1.0 + bk2) ** 2).sum(-1)

    def projected_potential(self, symbol, r):
        a, b = self.parameters(symbol)
        r = np.asarray(r, dtype=np.float64)[..., None]
        x = 2.0 * np.pi * r / np.sqrt(b)
        terms = a * (2.0 * np.pi / b * k0(x) + 2.0 * np.pi**2 * r * k1(x) / b**1.5)
        return POTENTIAL_PREFACTOR * terms.sum(-1)

    def potential(self, symbol, r):
        a, b = self.parameters(symbol)
        r = np.asarray(r, dtype=np.float64)[..., None]
        beta = 2.0 * np.pi / np.sqrt(b)
        terms = np.pi**2 * a / b**1.5 * (2.0 / (beta * r) + 1.0) * np.exp(-beta * r)
        return POTENTIAL_PREFACTOR * terms.sum(-1)


class Kirkland(Parametrization):
    """Kirkland, Advanced Computing in Electron Microscopy (2010), App. C: 3 Lorentzians + 3 Gaussians."""

    name = "kirkland"
    shape = (4, 3)

    def scattering_factor(self, symbol, k2):
        a, b, c, d = self.parameters(symbol)
        k2 = np.asarray(k2, dtype=np.float64)[..., None]
        return (a / (k2 + b) + c * np.exp(-d * k2)).sum(-1)

    def projected_potential(self, symbol, r):
        a, b, c, d = self.parameters(symbol)
        r = np.asarray(r, dtype=np.float64)[..., None]
        terms = 2.0 * np.pi * a * k0(2.0 * np.pi * r * np.sqrt(b)) + np.pi * c / d * np.exp(-np.pi**2 * r**2 / d)
        return POTENTIAL_PREFACTOR * terms.sum(-1)

    def potential(self, symbol, r):
        a, b, c, d = self.parameters(symbol)
        r = np.asarray(r, dtype=np.float64)[..., None]
        terms = (np.pi * a * np.exp(-2.0 * np.pi * r * np.sqrt(b)) / r
                 + np.pi**1.5 * c / d**1.5 * np.exp(-np.pi**2 * r**2 / d))
        return POTENTIAL_PREFACTOR * terms.sum(-1)


_CLASSES = {"lobato": Lobato, "kirkland": Kirkland}


@cache
def get_parametrization(name: str) -> Parametrization:
    """The parametrization called ``name`` ("lobato" or "kirkland")."""
    key = str(name).lower()
    if key not in _CLASSES:
        raise InputError(f"parametrization: unknown {name!r} (choose from {', '.join(PARAMETRIZATIONS)})")
    return _CLASSES[key]()
