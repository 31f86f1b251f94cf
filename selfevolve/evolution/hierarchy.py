"""Current roles per (model, domain) as a JSON value updated by model events."""

from __future__ import annotations

import copy
from dataclasses import replace
from collections.abc import Iterable, Mapping
from typing import Any

from selfevolve.models.catalogue import Catalogue, Role
from selfevolve.errors import ValidationError

ROLES: tuple[str, ...] = ("student", "ta", "teacher", "supervisor")
GLOBAL = -1
KINDS = ("promote", "demote", "spawn", "activate", "version")


def role_name(role: Any) -> str:
    """Normalise a Role enum member or a string to the lower-case role name."""
    name = getattr(role, "value", role)
    name = str(name).lower()
    if name not in ROLES:
        raise ValidationError(f"unknown role {role!r}")
    return name


def rank(role: Any) -> int:
    """Position of a role in student < ta < teacher < supervisor."""
    return ROLES.index(role_name(role))


def up(role: Any) -> str | None:
    """The role one step above, or None at the top."""
    i = rank(role)
    return ROLES[i + 1] if i + 1 < len(ROLES) else None


def down(role: Any) -> str | None:
    """The role one step below, or None at the bottom."""
    i = rank(role)
    return ROLES[i - 1] if i > 0 else None


def empty() -> dict:
    """A hierarchy with no models."""
    return {"models": {}, "domains": {}, "applied": 0}


def from_roles(roles: Mapping[str, Any]) -> dict:
    """A hierarchy where each model holds its catalogue role in every domain."""
    h = empty()
    h["models"] = {str(m): role_name(r) for m, r in sorted(roles.items())}
    return h


def from_catalogue(catalogue: Any) -> dict:
    """Hierarchy from catalogue specs (anything with name, role and reserve); reserves start out."""
    specs = getattr(catalogue, "models", catalogue)
    if isinstance(specs, Mapping):
        specs = list(specs.values())
    return from_roles({s.name: s.role for s in specs if not getattr(s, "reserve", False)})


def role(h: Mapping, model: str, domain: int = GLOBAL) -> str | None:
    """The model's role in a domain: the domain override, else its global role, else None."""
    per = h["domains"].get(str(domain), {})
    if model in per:
        return per[model]
    return h["models"].get(model)


def members(h: Mapping, domain: int = GLOBAL) -> dict[str, str]:
    """Every model serving a domain with its role there."""
    out = dict(h["models"])
    if domain != GLOBAL:
        out.update(h["domains"].get(str(domain), {}))
    return dict(sorted(out.items()))


def domains(h: Mapping) -> list[int]:
    """Domains with at least one per-domain role."""
    return sorted(int(d) for d in h["domains"])


def apply(h: Mapping, event: Mapping) -> dict:
    """Return the hierarchy after one ModelEvent; never mutates its input."""
    kind = event.get("kind")
    if kind not in KINDS:
        raise ValidationError(f"unknown model event kind {kind!r}")
    out = copy.deepcopy(dict(h))
    out["applied"] = int(h.get("applied", 0)) + 1
    if kind == "version":
        return out
    model = event["model"]
    domain = int(event.get("domain", GLOBAL))
    if event.get("new_role") is None:
        raise ValidationError(f"{kind} event for {model} has no new_role")
    new = role_name(event["new_role"])
    if domain == GLOBAL:
        out["models"][model] = new
    else:
        out["domains"].setdefault(str(domain), {})[model] = new
    return out


def replay(h: Mapping, events: Iterable[Mapping]) -> dict:
    """Fold a sequence of model events into a hierarchy."""
    for e in events:
        h = apply(h, e)
    return dict(h)


def event(kind: str, model: str, domain: int, old: str | None, new: str | None,
          reason: str = "", ts_ms: int = 0, checkpoint: str | None = None) -> dict:
    """A ModelEvent record (schemas/model_event.avsc)."""
    return {"version": 1, "model": model, "kind": kind, "domain": int(domain),
            "old_role": old, "new_role": new, "checkpoint": checkpoint,
            "reason": reason, "ts_ms": int(ts_ms)}


def domain_catalogue(base: Catalogue, h: Mapping, domain: int) -> Catalogue:
    """What the router sees for a query of `domain`: that domain's roles and activated reserve models."""
    roles = members(h, domain)
    return Catalogue(replace(s, role=Role.parse(roles[s.name]), reserve=False) if s.name in roles
                     else replace(s, reserve=True) for s in base.models)
