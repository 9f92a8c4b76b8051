"""Configurable resources of the HRTEM asset graph.

- :class:`Workspace` — where intermediate artifacts live (``$HRTEM_HOME``, default ``./.hrtem``).
- :class:`SimulationEngine` — multislice engine and device, overriding the dataset spec's choice.
- :class:`PublishTarget` — a local folder laid out like Hub repos (always written), plus optional Hub
  repository ids; the token comes from ``token`` or, when unset, from ``$HF_TOKEN`` / the cached login
  (resolved by ``huggingface_hub`` itself, so no secret ever sits in run config or the event log).

All three can be overridden per run from the launchpad (``resources: {workspace: {config: {root: ...}}}``).
"""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from hrtem_dataset.io import workspace_root
from hrtem_dataset.settings import get_settings


class Workspace(ConfigurableResource):
    """Root folder of the intermediate artifacts (structures, exit waves, imaged shards, builds)."""

    root: str | None = Field(None, description="workspace root; default $HRTEM_HOME, else ./.hrtem")

    def path(self) -> Path:
        return workspace_root(self.root)


class SimulationEngine(ConfigurableResource):
    """Multislice engine and device; ``None`` keeps what the dataset spec says."""

    engine: str | None = Field(None, description="torch | abtem | prismatic (default: the spec's engine)")
    device: str | None = Field(None, description="auto | cpu | cuda (default: the spec's device)")


class PublishTarget(ConfigurableResource):
    """Where ``published_dataset`` / ``published_model`` go.

    The local folder is always written (``<local_dir>/dataset``: a Hub dataset repo layout,
    ``<local_dir>/model``: a Hub model repo layout). With ``dataset_repo_id`` / ``model_repo_id`` the
    same folders are uploaded to the Hub and tagged with the dataset version.
    """

    local_dir: str | None = Field(None, description="default <workspace>/published/<config>")
    dataset_repo_id: str | None = Field(None, description="Hub dataset repo, e.g. org/hrtem-au-carbon")
    model_repo_id: str | None = Field(None, description="Hub model repo, e.g. org/hrtem-unet-resnet18")
    private: bool = False

    def folder(self, workspace: Path, group: str) -> Path:
        return Path(self.local_dir).resolve() if self.local_dir else workspace / "published" / group

    def resolved_token(self) -> str | None:
        """From the environment only (``$HF_TOKEN``, else huggingface_hub's cached login): a token in a
        resource field would be stored in the run config and the run database."""
        return get_settings().hf_token


def default_resources() -> dict[str, object]:
    """Resources bound in :data:`dagster_project.defs`, configured from the environment.

    ``HRTEM_HOME`` (workspace), ``HRTEM_ENGINE`` / ``HRTEM_DEVICE`` (simulation), ``HRTEM_PUBLISH_DIR``,
    ``HRTEM_DATASET_REPO_ID``, ``HRTEM_MODEL_REPO_ID`` (publishing; token from ``HF_TOKEN``).
    """
    env = get_settings()
    return {
        "workspace": Workspace(root=str(env.home) if env.home else None),
        "simulation": SimulationEngine(engine=env.engine, device=env.device),
        "publish_target": PublishTarget(local_dir=env.publish_dir, dataset_repo_id=env.dataset_repo_id,
                                        model_repo_id=env.model_repo_id),
    }
