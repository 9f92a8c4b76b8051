"""Structure builder: crystals, particle shapes, planar defects, amorphous carbon, scenes, sampling.

Public interface: :func:`build_scene`, :func:`sample_scene_spec`, :func:`write_extxyz`,
:func:`read_extxyz`, :func:`write_prismatic_xyz`, :func:`particle_atoms`.
"""

from ..crystals import Crystal, get_crystal
from .exporters import read_extxyz, write_extxyz, write_prismatic_xyz
from .particles import build_particle
from .sampling import sample_scene, sample_scene_spec, scene_seed
from .scene import build_scene, particle_atoms
from .substrate import amorphous_carbon, carbon_number_density

__all__ = [
    "Crystal", "amorphous_carbon", "build_particle", "build_scene", "carbon_number_density", "get_crystal",
    "particle_atoms", "read_extxyz", "sample_scene", "sample_scene_spec", "scene_seed", "write_extxyz",
    "write_prismatic_xyz",
]
