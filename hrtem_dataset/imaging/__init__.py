"""HRTEM imaging in PyTorch: aberrations (Krivanek polar, as abTEM), aperture and partial-coherence
envelopes, phonon averaging, Fourier cropping to the detector pixel size, detector MTF, dose noise,
and zero-defocus calibration. Batched; CPU and CUDA with the same code; numpy in/out for the
numpy-level API. Conventions: defocus = −C10 (> 0 underfocus), lengths in Å, angles in mrad
(aperture, angular spread) and rad (aberration angles), dose in e/Å²; arrays indexed [x, y].
"""

from ..spectra import fourier_crop_complex
from .aberrations import (
    POLAR_ALIASES,
    POLAR_SYMBOLS,
    aberration_coefficients,
    chi,
    point_resolution,
    polar_grid,
    scherzer_defocus,
)
from .calibration import calibrate_zero_defocus, contrast_curve, defocus_search_range
from .conditions import sample_imaging_conditions
from .ctf import aperture, spatial_envelope, temporal_envelope, transfer_function
from .detector import MTF_DEFAULTS, apply_dose, apply_mtf, mtf_rfft, poisson_counts
from .image import conditions_to_tensors, image_batch, image_intensity, render_image
from .resample import fourier_crop, resample, resampled_sampling, resampled_shape

__all__ = [
    "MTF_DEFAULTS",
    "POLAR_ALIASES",
    "POLAR_SYMBOLS",
    "aberration_coefficients",
    "aperture",
    "apply_dose",
    "apply_mtf",
    "calibrate_zero_defocus",
    "chi",
    "conditions_to_tensors",
    "contrast_curve",
    "defocus_search_range",
    "fourier_crop",
    "fourier_crop_complex",
    "image_batch",
    "image_intensity",
    "mtf_rfft",
    "point_resolution",
    "poisson_counts",
    "polar_grid",
    "render_image",
    "resample",
    "resampled_sampling",
    "resampled_shape",
    "sample_imaging_conditions",
    "scherzer_defocus",
    "spatial_envelope",
    "temporal_envelope",
    "transfer_function",
]
