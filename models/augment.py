"""Degradations of real recording and processing, applied to simulated training crops.

Real micrographs reach a model after steps a simulation does not make: the camera and its gain reference
(flat-field residuals, extra blur from drift and vibration), and the lab's processing (median filtering,
standardisation, display clipping, 8-bit export, downsampling for figures). A model trained only on clean
simulated images learns their noise and texture statistics and mistakes the carbon texture of real images
for particles. :func:`degrade` draws a random subset of these steps per crop (``realistic`` augmentation);
all draws come from the batch generator, so a training run stays reproducible and resumable.

Steps (each with its own probability, in this order, on a standardised crop):

1. median filter 3 × 3 (p = 0.25): median-filtered lab exports;
2. Gaussian blur, σ ∈ [0.3, 1.2] px (p = 0.4): information limit, drift/vibration, interpolation;
3. white noise, σ ∈ [0.05, 0.6] (p = 0.3): residual detector noise not in the simulation;
4. smooth gain field (p = 0.4): a linear ramp plus low-frequency noise of amplitude ∈ [0.1, 0.6],
   flat-field and thickness gradients;
5. display clipping at ±c σ, c ∈ [2, 4] (p = 0.4), then 8-bit quantisation (p = 0.5 of those).

The crop is re-standardised after the steps (zero mean, unit standard deviation), as at inference.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AUGMENTATIONS = ("dihedral", "realistic")


def _standardize(x: np.ndarray) -> np.ndarray:
    return ((x - x.mean()) / max(float(x.std()), 1e-6)).astype(np.float32)


def degrade(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random realistic degradation of a standardised 2-D crop (float32 in, float32 out, standardised)."""
    x = np.asarray(x, np.float32)
    if rng.random() < 0.25:
        x = ndimage.median_filter(x, size=3, mode="reflect")
    if rng.random() < 0.4:
        x = ndimage.gaussian_filter(x, float(rng.uniform(0.3, 1.2)), mode="reflect")
    x = _standardize(x)
    if rng.random() < 0.3:
        x = x + float(rng.uniform(0.05, 0.6)) * rng.standard_normal(x.shape).astype(np.float32)
    if rng.random() < 0.4:
        h, w = x.shape
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        a = rng.normal(size=2)
        field = a[0] * yy + a[1] * xx
        field = field + ndimage.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / 6, mode="wrap") * 6
        field = field / max(float(np.abs(field).max()), 1e-6)
        x = x + float(rng.uniform(0.1, 0.6)) * field.astype(np.float32)
    x = _standardize(x)
    if rng.random() < 0.4:
        c = float(rng.uniform(2.0, 4.0))
        x = np.clip(x, -c, c)
        if rng.random() < 0.5:
            x = np.round((x + c) / (2 * c) * 255.0) / 255.0 * (2 * c) - c
        x = _standardize(x)
    return x
