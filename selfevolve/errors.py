"""The project's error tree: one root, a few shallow branches."""


class SelfEvolveError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(SelfEvolveError):
    """Settings, catalogue or data files are missing or inconsistent."""


class DecodeError(SelfEvolveError):
    """An event's bytes cannot be decoded against any known schema."""


class ValidationError(SelfEvolveError):
    """An event decoded but breaks a rule (missing field, oversized text)."""


class BackendError(SelfEvolveError):
    """A model backend failed: timeout, HTTP error, missing recording."""


class StoreError(SelfEvolveError):
    """The history store (ClickHouse or chdb) rejected a read or write."""


class QueryRejected(StoreError):
    """User SQL was refused before (or by) the engine: not a read of the project's tables, or over a cap."""


class BrokerError(SelfEvolveError):
    """The local Kafka broker could not be fetched, started or reached."""


class TrainingError(SelfEvolveError):
    """Distillation could not build, train or load a student."""


class SandboxError(SelfEvolveError):
    """The sandbox for untrusted code could not be made; the code was not run."""
