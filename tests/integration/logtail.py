"""The last lines of a local stack's worker logs, for failure messages that say why a worker is not there."""

from __future__ import annotations

from selfevolve.config import Settings


def log_tails(settings: Settings, names: list[str], lines: int = 40) -> str:
    """Each named worker's last `lines` log lines (and the supervisor's), under a header per worker."""
    out = []
    for name in [*names, "supervisor"]:
        path = settings.home / "logs" / f"{name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as e:
            tail = [f"(no log: {e})"]
        out.append(f"--- {path} ---\n" + "\n".join(tail))
    return "\n".join(out)
