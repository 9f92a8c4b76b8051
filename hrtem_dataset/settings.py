"""The environment, read in one place: every ``HRTEM_*`` variable and the Hugging Face ones the project uses.

:func:`get_settings` returns a :class:`Settings` validated from the environment (pydantic-settings); no
other module reads ``os.environ``. The environment is read once per distinct environment: the settings are
cached under the tuple of the variables they read (every ``HRTEM_*`` and the Hugging Face ones below), so
repeated calls return the same (frozen) object without validating again, while a variable set or changed by
a test, a Dagster run worker or ``hrtem --workspace`` is seen by the next call.

=========================  =================================================================  ============
variable                   meaning                                                            default
=========================  =================================================================  ============
``HRTEM_HOME``             workspace root of the intermediate artifacts                       see below
``HRTEM_ENGINE``           multislice engine overriding the specs (Dagster resource)          the spec's
``HRTEM_DEVICE``           device overriding the specs (Dagster resource)                     the spec's
``HRTEM_EXECUTOR``         Dagster executor: multiprocess, in_process or dask                 multiprocess
``HRTEM_DASK_ADDRESS``     an existing Dask scheduler for the dask executor                   local cluster
``HRTEM_DASK_WORKERS``     workers of the local Dask cluster                                  2
``HRTEM_CONFIGS``          dataset configuration YAMLs/folders of the code location (os.pathsep)  ./configs
``HRTEM_STUDIES``          study YAMLs/folders of the code location (os.pathsep)              configs/studies
``HRTEM_PUBLISH_DIR``      local publishing folder                                            workspace
``HRTEM_DATASET_REPO_ID``  Hub dataset repo to upload to                                      none
``HRTEM_MODEL_REPO_ID``    Hub model repo to push to                                          none
``HRTEM_MAX_MEMORY_GB``    up-front memory limit (:mod:`hrtem_dataset.limits`)                80 % of RAM
``HF_TOKEN``               Hub token (else huggingface_hub's cached login)                    none
``HF_HUB_OFFLINE``,        offline mode: publishing and pushing stop before any upload        off
``TRANSFORMERS_OFFLINE``
=========================  =================================================================  ============

The workspace root is one rule (:meth:`Settings.workspace`): an explicit root, else ``HRTEM_HOME``, else the
caller's default (``./.hrtem``; ``<out>/.hrtem`` for ``hrtem materialize`` and ``hrtem study run``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import InputError

TRUE = ("1", "true", "yes", "on")
PREFIX = "HRTEM_"
HF_VARIABLES = ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class Settings(BaseSettings):
    """The project's environment variables (empty values count as unset); frozen, as it is shared."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path | None = None
    engine: str | None = None
    device: str | None = None
    executor: str = "multiprocess"
    dask_address: str | None = None
    dask_workers: int = 2
    configs: str | None = None
    studies: str | None = None
    publish_dir: str | None = None
    dataset_repo_id: str | None = None
    model_repo_id: str | None = None
    max_memory_gb: str | None = None
    hf_token: str | None = Field(None, validation_alias="HF_TOKEN")
    hf_hub_offline: str | None = Field(None, validation_alias="HF_HUB_OFFLINE")
    transformers_offline: str | None = Field(None, validation_alias="TRANSFORMERS_OFFLINE")

    @field_validator("home", mode="before")
    @classmethod
    def _no_blank_home(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    def workspace(self, root: str | os.PathLike | None = None, default: str | os.PathLike = ".hrtem") -> Path:
        """Workspace root: ``root``, else ``HRTEM_HOME``, else ``default`` (resolved)."""
        return Path(root or self.home or default).resolve()

    @property
    def offline(self) -> bool:
        """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
        return any(str(v or "").strip().lower() in TRUE for v in (self.hf_hub_offline, self.transformers_offline))

    @staticmethod
    def paths(value: str | None) -> list[Path]:
        """An ``os.pathsep``-separated list of paths (``HRTEM_CONFIGS``, ``HRTEM_STUDIES``)."""
        return [Path(p) for p in (value or "").split(os.pathsep) if p]


def _relevant_environment() -> tuple[tuple[str, str], ...]:
    """The environment items the settings read (names matched case-insensitively, as pydantic-settings does)."""
    return tuple(sorted((k, v) for k, v in os.environ.items()
                        if k.upper().startswith(PREFIX) or k.upper() in HF_VARIABLES))


def get_settings() -> Settings:
    """The settings of the current environment (:class:`InputError` naming a malformed variable).

    Read once per distinct environment: the validated :class:`Settings` is cached under the tuple of the
    ``HRTEM_*`` and Hugging Face items of ``os.environ``, so an unchanged environment returns the same object
    and a changed variable gives new settings at the next call (a malformed one raises every time)."""
    return _settings_for(_relevant_environment())


@lru_cache(maxsize=16)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    """:class:`Settings` validated from ``os.environ``, whose relevant items are ``environment``."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = f"{PREFIX}{str(err['loc'][0]).upper()}" if err.get("loc") else "environment"
        raise InputError(f"{name}: {err['msg']}") from None
