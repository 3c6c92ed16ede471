"""Where explanations become durable: object keys in bucket ``explanations`` and PostgreSQL.

Object keys are derived only from (image_id, model_version, method)::

    <image_id>/<model_version>/<method>/map.png | overlay.png | sidecar.json

Each part is checked against a strict pattern (the contracts already validate ids; this module does not
rely on it): a part that does not match, or that could be read as a path step, is replaced by
``h-<sha256>``, so every key stays under its image's prefix whatever the message said.

PostgreSQL: the explainer reads ``images.ref`` (the verdict carries no reference) and ``models`` (to load
a version it does not have), and upserts ``explanations`` keeping the first row, like the scorer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg2.extras import execute_values

from ingest.db import Database
from ingest.settings import PostgresSettings

logger = logging.getLogger(__name__)

BUCKET = "explanations"
# kind -> (file name, content type)
ARTEFACTS = {
    "map": ("map.png", "image/png"),
    "overlay": ("overlay.png", "image/png"),
    "sidecar": ("sidecar.json", "application/json"),
}
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


def key_part(value: str) -> str:
    """``value`` when it is a safe single path segment, else a stable hash of it."""
    if _PART.match(value) and ".." not in value:
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()


def object_keys(image_id: str, model_version: str, method: str) -> dict[str, str]:
    """``{"map": ..., "overlay": ..., "sidecar": ...}`` for one explanation."""
    prefix = f"{key_part(image_id)}/{key_part(model_version)}/{key_part(method)}"
    keys = {kind: f"{prefix}/{name}" for kind, (name, _ct) in ARTEFACTS.items()}
    for k in keys.values():  # belt and braces: the patterns above make this impossible
        if k.startswith("/") or any(p in {"", ".", ".."} for p in k.split("/")):
            raise ValueError(f"unsafe object key {k!r}")
    return keys


@dataclass(frozen=True)
class ExplanationRow:
    image_id: str
    model_version: str
    method: str
    keys: dict[str, str]
    evidence: dict[str, Any]


@dataclass(frozen=True)
class RegisteredModel:
    version: str
    object_key: str
    sha256: str


class ExplanationSink(Protocol):
    def image_refs(self, image_ids: list[str]) -> dict[str, str | None]: ...
    def registered_model(self, version: str) -> RegisteredModel | None: ...
    def write(self, rows: list[ExplanationRow]) -> None: ...
    def close(self) -> None: ...


UPSERT = """
INSERT INTO explanations (image_id, model_version, method, keys, evidence) VALUES %s
ON CONFLICT (image_id, model_version, method) DO NOTHING
"""


class PostgresExplanationSink:
    """Reads and writes on a reused connection (``ingest.db.Database``); a broken connection is dropped and
    becomes a ``TransientError``."""

    def __init__(self, pg: PostgresSettings) -> None:
        self.db = Database(pg)

    def _run(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())

    def image_refs(self, image_ids: list[str]) -> dict[str, str | None]:
        """``{image_id: ref}`` for the ids that have an ``images`` row (ref may be NULL)."""
        if not image_ids:
            return {}
        rows = self._run("SELECT id, ref FROM images WHERE id = ANY(%s)", (image_ids,))
        return {str(r[0]): (None if r[1] is None else str(r[1])) for r in rows}

    def registered_model(self, version: str) -> RegisteredModel | None:
        rows = self._run("SELECT version, object_key, sha256 FROM models WHERE version = %s", (version,))
        return RegisteredModel(str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    def write(self, rows: list[ExplanationRow]) -> None:
        if not rows:
            return
        values = [
            (r.image_id, r.model_version, r.method, json.dumps(r.keys), json.dumps(r.evidence)) for r in rows
        ]
        with self.db.cursor() as cur:  # one transaction per batch
            execute_values(cur, UPSERT, values)

    def close(self) -> None:
        self.db.close()
