"""Physical constants and relativistic electron optics (CODATA 2018).

- ``wavelength(E)``: relativistic electron wavelength in Å for kinetic energy E in eV,
  λ = h c / sqrt(E (2 m₀c² + E)). At 300 keV: 0.019687 Å; at 200 keV: 0.025079 Å.
- ``interaction_parameter(E)``: σ = 2π m e λ / h² in 1/(V·Å) with the relativistic mass,
  σ = (2π / (λ E)) · (m₀c² + E) / (2 m₀c² + E). At 300 keV: 6.52616e-4 1/(V·Å).
"""

from __future__ import annotations

import math

H = 6.62607015e-34  # J s
C = 2.99792458e8  # m/s
E_CHARGE = 1.602176634e-19  # C
M0 = 9.1093837015e-31  # kg
M0C2_EV = M0 * C**2 / E_CHARGE  # 510998.95 eV
HC_EV_ANGSTROM = H * C / E_CHARGE * 1e10  # 12398.42 eV·Å
BOHR = 0.529177210903  # Å
EPS0 = 8.8541878128e-12


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength [Å] for beam energy ``energy`` [eV]."""
    if energy <= 0:
        raise ValueError("energy must be > 0 eV")
    return HC_EV_ANGSTROM / math.sqrt(energy * (2.0 * M0C2_EV + energy))


def interaction_parameter(energy: float) -> float:
    """Interaction parameter σ [1/(V·Å)] for beam energy ``energy`` [eV]: exit phase = σ · v_z."""
    lam = wavelength(energy)
    return 2.0 * math.pi / (lam * energy) * (M0C2_EV + energy) / (2.0 * M0C2_EV + energy)


def relativistic_mass_ratio(energy: float) -> float:
    """γ = 1 + E / (m₀c²)."""
    return 1.0 + energy / M0C2_EV


def k_max_antialias(sampling: float) -> float:
    """Antialias aperture radius [1/Å]: 2/3 of the Nyquist frequency 1/(2·sampling)."""
    return (2.0 / 3.0) / (2.0 * sampling)
