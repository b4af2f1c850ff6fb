"""The metadata store: runs, executions, artifacts, lineage, blessings and pushes in one SQLite
file (``W/metadata.sqlite``), through the standard library.

Tables: ``runs`` (one per ``tirec run``), ``executions`` (one per component per run, with its
cache key and status), ``artifacts`` (type, uri, fingerprint, span), ``events`` (which execution
read or wrote which artifact: the lineage), ``blessings`` (the evaluator's decision on a model)
and ``pushes`` (the serving versions written). Every write commits at once, so a killed run
leaves a consistent store that the next run resumes from.
"""
from __future__ import annotations

import datetime
import json
import os
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  id INTEGER PRIMARY KEY, span INTEGER, status TEXT, started TEXT, finished TEXT, config TEXT);
CREATE TABLE IF NOT EXISTS executions (
  id INTEGER PRIMARY KEY, run_id INTEGER, component TEXT, cache_key TEXT, status TEXT,
  cached_from INTEGER, started TEXT, finished TEXT, seconds REAL, error TEXT);
CREATE TABLE IF NOT EXISTS artifacts (
  id INTEGER PRIMARY KEY, type TEXT, name TEXT, uri TEXT, fingerprint TEXT, span INTEGER,
  producer INTEGER, created TEXT);
CREATE TABLE IF NOT EXISTS events (
  execution_id INTEGER, artifact_id INTEGER, kind TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS blessings (
  id INTEGER PRIMARY KEY, model_artifact INTEGER, evaluation_artifact INTEGER, span INTEGER,
  blessed INTEGER, reasons TEXT, created TEXT);
CREATE TABLE IF NOT EXISTS pushes (
  id INTEGER PRIMARY KEY, model_artifact INTEGER, version INTEGER, path TEXT, run_id INTEGER,
  created TEXT);
"""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


class MetadataStore:
    """The workdir's SQLite store (created on first use)."""

    def __init__(self, path: str):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def _insert(self, table: str, **values) -> int:
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cur = self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(values.values()))
        self.db.commit()
        return int(cur.lastrowid)

    def _update(self, table: str, row_id: int, **values) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE {table} SET {sets} WHERE id = ?", (*values.values(), row_id))
        self.db.commit()

    # ---- runs and executions ------------------------------------------------------------------
    def start_run(self, span: int, config: dict) -> int:
        return self._insert("runs", span=span, status="running", started=now(), config=json.dumps(config))

    def finish_run(self, run_id: int, status: str) -> None:
        self._update("runs", run_id, status=status, finished=now())

    def start_execution(self, run_id: int, component: str, cache_key: str) -> int:
        return self._insert("executions", run_id=run_id, component=component, cache_key=cache_key,
                            status="running", started=now())

    def finish_execution(self, execution_id: int, status: str, seconds: float = 0.0, error: str | None = None,
                         cached_from: int | None = None) -> None:
        self._update("executions", execution_id, status=status, finished=now(), seconds=round(seconds, 2),
                     error=error, cached_from=cached_from)

    def cached_execution(self, component: str, cache_key: str) -> sqlite3.Row | None:
        """The newest execution that ran ``component`` with ``cache_key`` and succeeded."""
        return self.db.execute(
            "SELECT * FROM executions WHERE component = ? AND cache_key = ? AND status = 'succeeded' "
            "ORDER BY id DESC LIMIT 1", (component, cache_key)).fetchone()

    def executions(self, run_id: int) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM executions WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()

    def runs(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()

    # ---- artifacts and lineage ----------------------------------------------------------------
    def add_artifact(self, type_: str, name: str, uri: str, fingerprint: str, span: int, producer: int) -> int:
        return self._insert("artifacts", type=type_, name=name, uri=uri, fingerprint=fingerprint, span=span,
                            producer=producer, created=now())

    def link(self, execution_id: int, artifact_id: int, kind: str, name: str) -> None:
        """Records that ``execution_id`` read (``kind="input"``) or wrote (``"output"``) an artifact."""
        self._insert("events", execution_id=execution_id, artifact_id=artifact_id, kind=kind, name=name)

    def outputs(self, execution_id: int) -> dict[str, sqlite3.Row]:
        rows = self.db.execute(
            "SELECT a.*, e.name AS role FROM events e JOIN artifacts a ON a.id = e.artifact_id "
            "WHERE e.execution_id = ? AND e.kind = 'output'", (execution_id,)).fetchall()
        return {r["role"]: r for r in rows}

    def inputs(self, execution_id: int) -> dict[str, sqlite3.Row]:
        rows = self.db.execute(
            "SELECT a.*, e.name AS role FROM events e JOIN artifacts a ON a.id = e.artifact_id "
            "WHERE e.execution_id = ? AND e.kind = 'input'", (execution_id,)).fetchall()
        return {r["role"]: r for r in rows}

    def artifact(self, artifact_id: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM artifacts WHERE id = ?", (artifact_id,)).fetchone()

    def latest_artifact(self, type_: str, before_span: int) -> sqlite3.Row | None:
        """The newest artifact of ``type_`` of a span before ``before_span`` whose producer
        succeeded (the previous span's statistics)."""
        return self.db.execute(
            "SELECT a.* FROM artifacts a JOIN executions x ON x.id = a.producer "
            "WHERE a.type = ? AND a.span < ? AND x.status = 'succeeded' ORDER BY a.span DESC, a.id DESC LIMIT 1",
            (type_, before_span)).fetchone()

    # ---- blessings and pushes -----------------------------------------------------------------
    def bless(self, model_artifact: int, evaluation_artifact: int, span: int, blessed: bool,
              reasons: list[str]) -> int:
        return self._insert("blessings", model_artifact=model_artifact, evaluation_artifact=evaluation_artifact,
                            span=span, blessed=int(blessed), reasons=json.dumps(reasons), created=now())

    def blessing(self, model_artifact: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM blessings WHERE model_artifact = ? ORDER BY id DESC LIMIT 1",
                               (model_artifact,)).fetchone()

    def pushes_into(self, base: str) -> list[sqlite3.Row]:
        """The Pusher's versions under the serving folder ``base`` (``W/serving/<name>``), the
        highest version first, each with its model artifact's ``uri``, ``fingerprint`` and ``span``."""
        rows = self.db.execute(
            "SELECT p.version, p.path, a.uri, a.fingerprint, a.span FROM pushes p "
            "JOIN artifacts a ON a.id = p.model_artifact ORDER BY p.version DESC, p.id DESC").fetchall()
        return [r for r in rows if os.path.dirname(os.path.normpath(r["path"])) == os.path.normpath(base)]

    def find_artifact(self, fingerprint: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM artifacts WHERE fingerprint = ? ORDER BY id LIMIT 1",
                               (fingerprint,)).fetchone()

    def add_push(self, model_artifact: int, version: int, path: str, run_id: int) -> int:
        return self._insert("pushes", model_artifact=model_artifact, version=version, path=path, run_id=run_id,
                            created=now())

    def push_of(self, model_artifact: int) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM pushes WHERE model_artifact = ? ORDER BY id DESC LIMIT 1",
                               (model_artifact,)).fetchone()

    def pushes(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM pushes ORDER BY id").fetchall()
