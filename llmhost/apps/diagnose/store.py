"""Diagnoses and their feedback, in SQLite (``<data_dir>/diagnose.db``, WAL).

A diagnosis is kept with its suggestions (JSON), so feedback can name a suggestion and the report can
pair each stated confidence with what happened. Feedback is one row per (diagnosis, suggestion, rater):
a rater who reports again replaces their earlier verdict.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from llmhost.apps.diagnose.report import Outcome
from llmhost.errors import NotFoundError, RequestError

__all__ = ["DiagnoseStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS diagnoses (
    id          TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    category    TEXT NOT NULL,
    model       TEXT NOT NULL,
    template    TEXT NOT NULL,
    latency_s   REAL NOT NULL,
    suggestions TEXT NOT NULL,
    caller      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS feedback (
    diagnosis_id TEXT NOT NULL REFERENCES diagnoses (id),
    suggestion   INTEGER NOT NULL,
    rater        TEXT NOT NULL,
    applied      INTEGER,
    worked       INTEGER,
    rating       INTEGER,
    comment      TEXT NOT NULL DEFAULT '',
    created      REAL NOT NULL,
    PRIMARY KEY (diagnosis_id, suggestion, rater)
);
"""


class DiagnoseStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def add(self, diagnosis: dict[str, Any], caller: str = "") -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO diagnoses (id, created, category, model, template, latency_s, "
                "suggestions, caller) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    diagnosis["id"],
                    diagnosis["created"],
                    diagnosis["category"],
                    diagnosis["model"],
                    diagnosis["template"],
                    diagnosis["latency_s"],
                    json.dumps(diagnosis["suggestions"]),
                    caller,
                ),
            )

    def get(self, diagnosis_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute(
                "SELECT id, created, category, model, template, latency_s, suggestions FROM diagnoses "
                "WHERE id = ?",
                (diagnosis_id,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no diagnosis with id {diagnosis_id!r}", code="diagnosis_not_found")
        keys = ("id", "created", "category", "model", "template", "latency_s", "suggestions")
        out = dict(zip(keys, row, strict=True))
        out["suggestions"] = json.loads(out["suggestions"])
        return out

    def add_feedback(
        self,
        diagnosis_id: str,
        suggestion: int,
        rater: str,
        *,
        applied: bool | None,
        worked: bool | None,
        rating: int | None,
        comment: str = "",
    ) -> None:
        diagnosis = self.get(diagnosis_id)
        if not 1 <= suggestion <= len(diagnosis["suggestions"]):
            raise RequestError(
                f"diagnosis {diagnosis_id} has {len(diagnosis['suggestions'])} suggestions; "
                f"suggestion {suggestion} does not exist",
                param="suggestion",
            )
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO feedback (diagnosis_id, suggestion, rater, applied, worked, rating, "
                "comment, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (diagnosis_id, suggestion, rater, applied, worked, rating, comment, time.time()),
            )

    def outcomes(self) -> list[Outcome]:
        """One outcome per (suggestion, rater) feedback; a suggestion without feedback once, unrated."""
        with self._lock:
            diagnoses = self._db.execute(
                "SELECT id, category, latency_s, suggestions FROM diagnoses ORDER BY created"
            ).fetchall()
            rows = self._db.execute(
                "SELECT diagnosis_id, suggestion, rater, applied, worked, rating FROM feedback"
            ).fetchall()
        feedback: dict[tuple[str, int], list[tuple[Any, ...]]] = {}
        for row in rows:
            feedback.setdefault((row[0], row[1]), []).append(row)
        out: list[Outcome] = []
        for diagnosis_id, category, latency, suggestions in diagnoses:
            for n, s in enumerate(json.loads(suggestions), 1):
                base = (diagnosis_id, f"{diagnosis_id}/{n}", category, float(s["confidence"]), float(latency))
                given = feedback.get((diagnosis_id, n))
                if not given:
                    out.append(Outcome(*base, None, None, None, None))
                    continue
                for _, _, rater, applied, worked, rating in given:
                    out.append(Outcome(*base, _bool(applied), _bool(worked), rating, rater))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)
