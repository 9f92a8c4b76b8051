"""Multislice exit waves (engines: torch, abtem, prismatic).

``simulate_exit_wave`` / ``simulate_exit_waves`` (batched) / ``simulate_scene`` run the project's own
PyTorch multislice (default; CPU and CUDA, same code), abTEM or Prismatic with one set of conventions:
Å, eV, plane wave along +z, exit wave at the exit surface, vacuum |ψ| = 1, arrays indexed [x, y].
"""

from .core import (
    ENGINES,
    engine_version,
    particle_only,
    simulate_exit_wave,
    simulate_exit_waves,
    simulate_scene,
)
from .phonons import default_rms_displacement, displaced_positions
from .physics import interaction_parameter, wavelength
from .potentials import PARAMETRIZATIONS, get_parametrization

__all__ = [
    "ENGINES",
    "PARAMETRIZATIONS",
    "default_rms_displacement",
    "displaced_positions",
    "engine_version",
    "get_parametrization",
    "interaction_parameter",
    "particle_only",
    "simulate_exit_wave",
    "simulate_exit_waves",
    "simulate_scene",
    "wavelength",
]
