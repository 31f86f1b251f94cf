"""Builds one backend per backend name that the catalogue's active models use."""

from __future__ import annotations

from pathlib import Path

from workers.backends.base import Backend
from selfevolve.models.catalogue import Catalogue
from selfevolve.config import Settings
from selfevolve.errors import ConfigError

ROUTERBENCH_SUBDIR = "routerbench-0shot"
DEMO_DIR = Path(__file__).resolve().parents[2] / "selfevolve" / "data" / "demo"


def default_replay_dir(settings: Settings) -> Path:
    """The full RouterBench data beside the project when present, else the demo slice shipped in the package."""
    full = settings.data_dir / ROUTERBENCH_SUBDIR
    return full if full.is_dir() else DEMO_DIR


def build_backend(name: str, settings: Settings, *, replay_dir: Path | None = None) -> Backend:
    """One backend by name; imports only what that backend needs (torch stays unloaded for replay/openai)."""
    if name == "replay":
        from workers.backends.recorded import ReplayBackend

        return ReplayBackend.from_dir(replay_dir or default_replay_dir(settings))
    if name == "openai":
        from workers.backends.openai import OpenAIBackend

        return OpenAIBackend(settings)
    if name == "local":
        from workers.backends.local import LocalBackend

        return LocalBackend(settings)
    raise ConfigError(f"unknown backend {name!r}; expected replay, openai or local")


def build_backends(settings: Settings, catalogue: Catalogue, *, replay_dir: Path | None = None) -> dict[str, Backend]:
    """{backend name: backend} for the active models; a reserve model's backend is built when it is activated."""
    names = dict.fromkeys(s.backend for s in catalogue.active())
    return {name: build_backend(name, settings, replay_dir=replay_dir) for name in names}
