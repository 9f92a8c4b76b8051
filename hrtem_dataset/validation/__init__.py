"""Physics validation of the simulation: engine agreement (torch, abTEM, Prismatic), convergence with
sampling, slice thickness and frozen-phonon count, Kirkland's Fig. 5.12 and CTF zeros vs Scherzer.

``hrtem validate [SCENE | --reference | --config CONFIG.yaml] --out DIR`` and the Dagster asset
``<config>/validation_report`` write the report (``validation.json``, ``README.md``, ``plots/*.png``);
the tolerances live here (:mod:`.physics`), not in the orchestration.
"""

from .physics import (
    CTF_ZERO_TOLERANCE,
    ENGINE_FACTOR,
    EXIT_WAVE_TOLERANCE,
    KIRKLAND_FIG_5_12,
    available_engines,
    ctf_zeros,
    engine_comparison,
    kirkland_fig_5_12,
    phonon_convergence,
    rel_l2,
    sampling_convergence,
    settings_error,
    slice_convergence,
    wave_error,
)
from .report import (
    card_section,
    configuration_report,
    dataset_report_dir,
    read_report,
    reference_report,
    render_card,
    scene_report,
    summary,
    write_report,
)
from .scenes import au_cube, configuration_scene, crop_window, reference_scene

__all__ = [
    "card_section", "dataset_report_dir",
    "CTF_ZERO_TOLERANCE", "ENGINE_FACTOR", "EXIT_WAVE_TOLERANCE", "KIRKLAND_FIG_5_12", "au_cube",
    "available_engines", "configuration_report", "configuration_scene", "crop_window", "ctf_zeros",
    "engine_comparison", "kirkland_fig_5_12", "phonon_convergence", "read_report", "reference_report",
    "reference_scene", "rel_l2", "render_card", "sampling_convergence", "scene_report", "settings_error",
    "slice_convergence", "summary", "wave_error", "write_report",
]
