"""The model catalogue: who can answer, through which backend, at what price, in which role of the hierarchy."""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from selfevolve.errors import ConfigError

BACKENDS = ("replay", "openai", "local")


class Role(str, enum.Enum):
    """Place in the hierarchy, ordered student < ta < teacher < supervisor."""

    STUDENT = "student"
    TA = "ta"
    TEACHER = "teacher"
    SUPERVISOR = "supervisor"

    @property
    def rank(self) -> int:
        return _RANK[self]

    # str defines every comparison, so all four are overridden to compare by rank instead of spelling.
    def __lt__(self, other: object) -> bool:
        return self.rank < Role(other).rank if isinstance(other, (Role, str)) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= Role(other).rank if isinstance(other, (Role, str)) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > Role(other).rank if isinstance(other, (Role, str)) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= Role(other).rank if isinstance(other, (Role, str)) else NotImplemented

    __hash__ = str.__hash__

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        try:
            return cls(str(value).lower())
        except ValueError as e:
            raise ConfigError(f"unknown role {value!r}; expected one of {[r.value for r in cls]}") from e


_RANK = {r: i for i, r in enumerate(Role)}


@dataclass(frozen=True)
class ModelSpec:
    """One model. tier is its fixed price band (0 = cheapest); role is its current, evolving place."""

    name: str
    backend: str
    role: Role
    tier: int
    cost_per_call: float | None = None
    cost_per_1k_prompt: float | None = None
    cost_per_1k_completion: float | None = None
    reserve: bool = False
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A private copy, so the caller's dict cannot change a spec after the fact.
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "role", Role.parse(self.role))


def estimate_cost(spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
    """USD of one call: the flat per-call price plus the per-1k-token prices, each 0 when unset."""
    return (
        (spec.cost_per_call or 0.0)
        + prompt_tokens / 1000.0 * (spec.cost_per_1k_prompt or 0.0)
        + completion_tokens / 1000.0 * (spec.cost_per_1k_completion or 0.0)
    )


class Catalogue:
    """An immutable set of ModelSpecs; changes return a new Catalogue."""

    def __init__(self, specs: Iterable[ModelSpec]) -> None:
        self._specs: tuple[ModelSpec, ...] = tuple(specs)
        self._by_name: dict[str, ModelSpec] = {}
        for s in self._specs:
            if s.name in self._by_name:
                raise ConfigError(f"model {s.name!r} is listed twice in the catalogue")
            self._by_name[s.name] = s
        # Immutable, so the views every routing decision asks for are computed once.
        self._active = tuple(s for s in self._specs if not s.reserve)
        self._fallbacks: dict[str, str] | None = None

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        """Read a YAML file with a top-level `models:` list."""
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read catalogue {path}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"catalogue {path} is not valid YAML: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
            raise ConfigError(f"catalogue {path}: expected a mapping with a 'models' list")
        return cls(_parse_entry(entry, i, path) for i, entry in enumerate(doc["models"]))

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model, reserve pool included, in file order."""
        return self._specs

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self):
        return iter(self._specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalogue) and self._specs == other._specs

    def __repr__(self) -> str:
        return f"Catalogue({[s.name for s in self._specs]})"

    def get(self, name: str) -> ModelSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"model {name!r} is not in the catalogue") from None

    def active(self) -> tuple[ModelSpec, ...]:
        """Models that serve traffic now (not in the reserve pool)."""
        return self._active

    def reserve(self) -> tuple[ModelSpec, ...]:
        return tuple(s for s in self._specs if s.reserve)

    def by_role(self, role: Role | str) -> tuple[ModelSpec, ...]:
        """Active models holding role; the reserve pool holds no role in the hierarchy yet."""
        role = Role.parse(role)
        return tuple(s for s in self.active() if s.role == role)

    def _replace(self, name: str, **changes: Any) -> Catalogue:
        self.get(name)
        return Catalogue(replace(s, **changes) if s.name == name else s for s in self._specs)

    def with_role(self, name: str, role: Role | str) -> Catalogue:
        """A copy where name holds role (promotion / demotion); its price tier is unchanged."""
        return self._replace(name, role=Role.parse(role))

    def activate(self, name: str, role: Role | str = Role.STUDENT) -> Catalogue:
        """A copy where reserve model name serves traffic in role (a spawn in replay mode)."""
        if not self.get(name).reserve:
            raise ConfigError(f"model {name!r} is already active")
        return self._replace(name, reserve=False, role=Role.parse(role))

    def add(self, spec: ModelSpec) -> Catalogue:
        """A copy with one more model (a freshly distilled student)."""
        return Catalogue((*self._specs, spec))

    def fallbacks(self) -> dict[str, str]:
        """Active model -> the model its failed calls fall back to (next_tier), for every model that has one."""
        if self._fallbacks is None:
            self._fallbacks = {s.name: nxt.name for s in self._active if (nxt := self.next_tier(s.name))}
        return dict(self._fallbacks)

    def next_tier(self, name: str) -> ModelSpec | None:
        """Cheapest active model in the nearest higher tier that has one, or None at the top."""
        tier = self.get(name).tier
        above = [s for s in self.active() if s.tier > tier]
        if not above:
            return None
        nearest = min(s.tier for s in above)
        return min((s for s in above if s.tier == nearest), key=lambda s: (_price_key(s), s.name))


def _price_key(spec: ModelSpec) -> float:
    # Per-token-only models are compared on a nominal 500+200-token call so they rank beside per-call ones.
    return estimate_cost(spec, 500, 200)


def _parse_entry(entry: Any, index: int, path: Path) -> ModelSpec:
    label = f"catalogue {path.name}, models[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(entry).__name__}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{label}: missing 'name'")
    label = f"{label} ({name})"
    known = {"name", "backend", "role", "tier", "cost_per_call", "cost_per_1k_prompt", "cost_per_1k_completion",
             "reserve", "options"}
    if unknown := sorted(set(entry) - known):
        raise ConfigError(f"{label}: unknown keys {unknown}")
    backend = entry.get("backend")
    if backend not in BACKENDS:
        raise ConfigError(f"{label}: backend {backend!r} is not one of {list(BACKENDS)}")
    try:
        role = Role.parse(entry.get("role", ""))
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}") from e
    tier = entry.get("tier")
    if not isinstance(tier, int) or isinstance(tier, bool) or tier < 0:
        raise ConfigError(f"{label}: 'tier' must be an integer >= 0, got {tier!r}")
    costs = {}
    for key in ("cost_per_call", "cost_per_1k_prompt", "cost_per_1k_completion"):
        value = entry.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
        ):
            raise ConfigError(f"{label}: {key!r} must be a number >= 0, got {value!r}")
        costs[key] = None if value is None else float(value)
    reserve = entry.get("reserve", False)
    if not isinstance(reserve, bool):
        raise ConfigError(f"{label}: 'reserve' must be true or false")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{label}: 'options' must be a mapping")
    return ModelSpec(name, backend, role, tier, reserve=reserve, options=options, **costs)
