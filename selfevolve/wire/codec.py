"""Avro single-object codec: fingerprint-framed encode/decode with schema resolution across versions."""

from __future__ import annotations

import copy
import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError as AvroValidationError
from fastavro.validation import validate as avro_validate

from selfevolve.errors import ConfigError, DecodeError, ValidationError

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
_VERSION_FILE = re.compile(r"^(?P<kind>[a-z][a-z0-9_]*)\.v(?P<version>[0-9]+)\.avsc$")


def default_schemas_dir() -> Path:
    """The repo's schemas/ next to the package (works for editable installs and a plain checkout)."""
    return Path(__file__).resolve().parents[2] / "schemas"


def schema_fingerprint(schema: dict | str) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, as the 8 little-endian bytes the framing carries."""
    # fastavro's hex string is already in little-endian byte order (checked against the spec's vector).
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@dataclass(frozen=True)
class _Schema:
    kind: str
    version: int
    raw: dict
    parsed: dict
    header: bytes
    defaults: dict
    field_names: frozenset
    required: frozenset


def _schema_version(kind: str, raw: dict) -> int:
    # The `version` field's default is the schema's version: writers stamp it, readers see the writer's.
    for field in raw.get("fields", ()):
        if field.get("name") == "version" and field.get("type") == "int" and isinstance(field.get("default"), int):
            return field["default"]
    raise ConfigError(f"schema {kind!r} has no int `version` field with a default")


def _build(kind: str, raw: dict) -> _Schema:
    if raw.get("type") != "record":
        raise ConfigError(f"schema {kind!r} is not an Avro record")
    version = _schema_version(kind, raw)
    try:
        parsed = fastavro.parse_schema(copy.deepcopy(raw))
        fp = schema_fingerprint(copy.deepcopy(raw))
    except Exception as e:  # fastavro raises several unrelated types for a bad schema
        raise ConfigError(f"schema {kind!r} v{version} is not valid Avro: {e}") from e
    fields = raw["fields"]
    return _Schema(
        kind=kind,
        version=version,
        raw=copy.deepcopy(raw),
        parsed=parsed,
        header=MAGIC + fp,
        defaults={f["name"]: f["default"] for f in fields if "default" in f},
        field_names=frozenset(f["name"] for f in fields),
        required=frozenset(f["name"] for f in fields if "default" not in f),
    )


def _load_json(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read schema file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"schema file {path} does not hold a JSON object")
    return raw


class Codec:
    """Encodes and decodes events of every kind; knows every writer schema version by fingerprint."""

    def __init__(self, schemas: Mapping[str, dict], history: Iterable[tuple[str, dict]] = ()) -> None:
        if not schemas:
            raise ConfigError("no schemas given")
        self._current: dict[str, _Schema] = {kind: _build(kind, raw) for kind, raw in schemas.items()}
        self._writers: dict[bytes, _Schema] = {}
        for kind, raw in history:
            if kind not in self._current:
                raise ConfigError(f"historical schema for {kind!r} has no current schema {kind}.avsc")
            old = _build(kind, raw)
            cur = self._current[kind]
            if old.version == cur.version and old.header != cur.header:
                raise ConfigError(
                    f"two different {kind!r} schemas claim v{old.version}; bump the version field's default "
                    f"in {kind}.avsc and keep the old one in versions/"
                )
            self._writers[old.header[len(MAGIC):]] = old
        # Current schemas go last so they win a fingerprint shared with an old version (doc/default-only edits).
        for cur in self._current.values():
            self._writers[cur.header[len(MAGIC):]] = cur

    @classmethod
    def from_dir(cls, schemas_dir: Path | None = None) -> Codec:
        """Load `<dir>/*.avsc` as the current schemas and `<dir>/versions/<kind>.v<N>.avsc` as known writers."""
        root = Path(schemas_dir) if schemas_dir is not None else default_schemas_dir()
        if not root.is_dir():
            raise ConfigError(f"schemas directory {root} does not exist")
        schemas = {p.stem: _load_json(p) for p in sorted(root.glob("*.avsc"))}
        if not schemas:
            raise ConfigError(f"no *.avsc files in {root}")
        history: list[tuple[str, dict]] = []
        versions = root / "versions"
        for path in sorted(versions.glob("*.avsc")) if versions.is_dir() else ():
            m = _VERSION_FILE.match(path.name)
            if m is None:
                raise ConfigError(f"{path} is not named <kind>.v<N>.avsc")
            raw = _load_json(path)
            kind, named = m["kind"], int(m["version"])
            if _schema_version(kind, raw) != named:
                raise ConfigError(f"{path} is named v{named} but its version field defaults to "
                                  f"{_schema_version(kind, raw)}")
            history.append((kind, raw))
        return cls(schemas, history)

    def kinds(self) -> list[str]:
        """The kinds this codec reads and writes (schema file stems), sorted."""
        return sorted(self._current)

    def schema(self, kind: str) -> dict:
        """A copy of the current (reader and writer) schema of `kind`, as written in its .avsc file."""
        return copy.deepcopy(self._get(kind).raw)

    def version(self, kind: str) -> int:
        """The current schema version of `kind` (what encode stamps into `version`)."""
        return self._get(kind).version

    def _get(self, kind: str) -> _Schema:
        try:
            return self._current[kind]
        except KeyError:
            raise ConfigError(f"unknown event kind {kind!r}; known: {', '.join(self.kinds())}") from None

    def encode(self, kind: str, record: Mapping[str, Any]) -> bytes:
        """Single-object bytes of `record` under the current `kind` schema; fills `version` and defaults."""
        s = self._get(kind)
        full = {**s.defaults, **record}
        full["version"] = s.version
        # fastavro's writer silently drops unknown keys; a typo in an optional field would lose data.
        unknown = full.keys() - s.field_names
        if unknown:
            raise ValidationError(f"{kind} record has unknown field(s) {', '.join(map(repr, sorted(unknown)))}")
        missing = s.required - full.keys()
        if missing:
            raise ValidationError(
                f"{kind} record is missing required field(s) {', '.join(map(repr, sorted(missing)))}")
        # The writer alone would truncate a float into a long or overflow an int without complaint. Checked
        # without errors first: with raise_errors=True fastavro builds an error (a JSON dump of the datum) for
        # every union branch it tries and rejects (a vector's "null"), 6x the cost of the check itself.
        if not avro_validate(full, s.parsed, raise_errors=False):
            try:
                avro_validate(full, s.parsed, raise_errors=True)
            except AvroValidationError as e:
                raise ValidationError(f"{kind} record does not fit its schema: {'; '.join(map(str, e.errors))}") from e
        buf = io.BytesIO()
        buf.write(s.header)
        try:
            fastavro.schemaless_writer(buf, s.parsed, full)
        except UnicodeEncodeError as e:  # lone surrogates pass validation but have no UTF-8 form
            raise ValidationError(f"{kind} record has a string that is not valid UTF-8: {e}") from e
        return buf.getvalue()

    def kind_of(self, data: bytes | bytearray | memoryview | None) -> str | None:
        """The kind of the record's writer schema, from its fingerprint; None when it has none we know."""
        if not data or len(data) < HEADER_LEN or bytes(data[: len(MAGIC)]) != MAGIC:
            return None
        writer = self._writers.get(bytes(data[len(MAGIC):HEADER_LEN]))
        return writer.kind if writer is not None else None

    def decode(self, kind: str, data: bytes | bytearray | memoryview | None) -> dict:
        """Read single-object bytes into the current `kind` schema, resolving from the writer's version."""
        reader = self._get(kind)
        if not data:
            raise DecodeError(f"empty payload on a {kind} stream (a tombstone or an empty message)")
        data = bytes(data)
        if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
            raise DecodeError(f"not Avro single-object encoding: payload starts with 0x{data[:2].hex()}, "
                              f"expected 0x{MAGIC.hex()}")
        if len(data) < HEADER_LEN:
            raise DecodeError(f"truncated header: payload is {len(data)} bytes, the single-object header "
                              f"needs {HEADER_LEN}")
        fp = data[len(MAGIC):HEADER_LEN]
        writer = self._writers.get(fp)
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint 0x{fp.hex()}: no schema in schemas/ or "
                              f"schemas/versions/ has it (add the writer's .avsc to schemas/versions/)")
        if writer.kind != kind:
            raise DecodeError(f"wrong schema: payload is a {writer.kind} record (v{writer.version}), "
                              f"expected {kind}")
        buf = io.BytesIO(data)
        buf.seek(HEADER_LEN)
        what = f"the {kind} v{writer.version} record"
        try:
            # Same schema: skip resolution, which is the common and faster path.
            record = fastavro.schemaless_reader(buf, writer.parsed, None if writer is reader else reader.parsed)
        except SchemaResolutionError as e:
            raise DecodeError(f"incompatible schemas: a {kind} v{writer.version} writer cannot be read as "
                              f"{kind} v{reader.version}: {e}") from e
        except Exception as e:  # fastavro surfaces garbage as ValueError, IndexError, UnicodeDecodeError...
            # The Cython reader runs a varint past the end as IndexError('string index ...'), not EOFError.
            if isinstance(e, EOFError) or (isinstance(e, IndexError) and "string index" in str(e)):
                raise DecodeError(f"truncated body: {what} ends early ({len(data)} bytes in all)") from e
            raise DecodeError(f"corrupt body: {what} does not parse ({type(e).__name__}: {e})") from e
        extra = len(data) - buf.tell()
        if extra < 0:  # a string or bytes length pointed past the end and was read short
            raise DecodeError(f"truncated body: {what} ends early ({len(data)} bytes in all)")
        if extra:
            raise DecodeError(f"trailing garbage: {extra} bytes after {what}")
        return record
