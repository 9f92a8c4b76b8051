"""hrtem-dataset: simulated HRTEM datasets of nanoparticles with ground-truth labels.

Data flows one way: spec -> structures -> exit waves -> images + labels -> dataset -> models.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hrtem-dataset")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
