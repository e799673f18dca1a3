"""Expert feedback store: who said what about which hypothesis or feature, and why.

SQLite by default (WAL journal, a busy timeout and retries, so several browser sessions can write
at once without losing a row), through SQLAlchemy so a lab can point ``url`` at PostgreSQL. The
schema is versioned: ``schema_version`` holds the applied version and :data:`MIGRATIONS` are
applied in order on open. Nothing is ever deleted: a correction is a new row.

Reasons (the vocabulary the app and the CLI offer): ``technical_artifact``, ``confounder``,
``known_biology``, ``wrong_cell_type`` (cell-type contamination), ``single_donor``,
``implausible_direction``, ``other``. What each one does to a child run:
:mod:`discovery.tl.refine` (the artifact reasons change the model) and
:mod:`discovery.tl.expert` (the others change the cohort, the evidence and the ranking).
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from discovery.io.contract import InputError

__all__ = ["MIGRATIONS", "REASONS", "REASON_ALIASES", "TARGET_KINDS", "VERDICTS", "FeedbackItem",
           "FeedbackStore", "check_target", "default_url", "resolve_reason", "target_kind"]

REASONS = ("technical_artifact", "confounder", "known_biology", "wrong_cell_type",
           "single_donor", "implausible_direction", "other")
VERDICTS = ("agree", "disagree")
TARGET_KINDS = ("hypothesis", "feature", "plan")
#: words an expert may type for a reason, and the reason they mean
REASON_ALIASES = {"batch": "technical_artifact", "artifact": "technical_artifact",
                  "technical": "technical_artifact", "confound": "confounder",
                  "known": "known_biology", "cell_type": "wrong_cell_type",
                  "contamination": "wrong_cell_type", "donor": "single_donor",
                  "direction": "implausible_direction"}


def target_kind(target: str) -> str:
    """What a feedback target names: ``hypothesis`` (H3), ``plan`` (P2) or ``feature``
    (``pooled:F12``, see :func:`discovery.io.layout.feature_id`); a clear error otherwise."""
    import re

    target = target.strip()
    if re.fullmatch(r"H\d+", target):
        return "hypothesis"
    if re.fullmatch(r"P\d+", target):
        return "plan"
    if re.fullmatch(r".+:F\d+", target):
        return "feature"
    msg = (f"target {target!r} is neither a feature (pooled:F12), a hypothesis (H3) nor a "
           "plan (P2)")
    raise InputError(msg)


def check_target(run_dir: str | Path, target: str) -> str:
    """The kind of ``target`` (:func:`target_kind`) once it is known to exist in the run:
    a hypothesis or plan id of ``hypotheses.json`` / ``plans.json``, or a feature of
    ``features/annotations.json``. Feedback on a target the run does not have would be stored
    and then break ``refine``; it is refused here with the run's ids named."""
    from discovery.io import layout
    from discovery.io.files import read_json

    kind = target_kind(target)
    target = target.strip()
    rel = {"hypothesis": layout.HYPOTHESES, "plan": layout.PLANS,
           "feature": layout.ANNOTATIONS}[kind]
    path = Path(run_dir) / rel
    if not path.is_file():
        msg = (f"{run_dir} has no {rel} yet, so {kind} {target!r} cannot be checked; finish "
               "`discovery run` first")
        raise InputError(msg)
    data = read_json(path)
    if kind == "feature":
        ids = [str(r.get("feature")) for r in data]
    else:
        ids = [str(r.get("id")) for r in data.get("hypotheses" if kind == "hypothesis"
                                                     else "plans", [])]
    if target not in ids:
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        msg = (f"the run has no {kind} {target!r}; its {kind} ids are {shown or '(none)'}"
               f" ({len(ids)} in all)")
        raise InputError(msg)
    return kind


def resolve_reason(reason: str) -> str:
    """The reason a typed word means (``batch`` -> ``technical_artifact``); known reasons pass."""
    return REASON_ALIASES.get(reason, reason)

#: schema version -> SQL statements that bring the previous version to it
MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE IF NOT EXISTS feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created TEXT NOT NULL,
            run_id TEXT NOT NULL,
            target_kind TEXT NOT NULL,
            target_id TEXT NOT NULL,
            verdict TEXT NOT NULL,
            reason TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            author TEXT NOT NULL,
            client TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX IF NOT EXISTS ix_feedback_run ON feedback (run_id)",
    ],
    2: [
        """CREATE TABLE IF NOT EXISTS actions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created TEXT NOT NULL,
            feedback_id INTEGER,
            run_id TEXT NOT NULL,
            action TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '',
            child_run TEXT
        )""",
    ],
}
SCHEMA_VERSION = max(MIGRATIONS)


def default_url(run_dir: str | Path) -> str:
    """``DISCOVERY_FEEDBACK_URL`` when set, else ``sqlite:///RUN_DIR/feedback.sqlite``."""
    env = os.environ.get("DISCOVERY_FEEDBACK_URL")
    if env:
        return env
    return f"sqlite:///{Path(run_dir).resolve() / 'feedback.sqlite'}"


@dataclass
class FeedbackItem:
    """One expert judgement of a hypothesis, feature or plan."""

    run_id: str
    target_kind: str
    target_id: str
    verdict: str
    reason: str
    author: str
    note: str = ""
    client: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        if self.target_kind not in TARGET_KINDS:
            msg = f"target kind must be one of {TARGET_KINDS}, got {self.target_kind!r}"
            raise InputError(msg)
        if self.verdict not in VERDICTS:
            msg = f"verdict must be one of {VERDICTS}, got {self.verdict!r}"
            raise InputError(msg)
        if self.reason not in REASONS:
            msg = f"reason must be one of {', '.join(REASONS)}; got {self.reason!r}"
            raise InputError(msg)
        if not str(self.target_id).strip():
            msg = "feedback needs a target id (e.g. H3 or pooled:F12)"
            raise InputError(msg)
        self.author = str(self.author or "").strip() or getpass.getuser()


class FeedbackStore:
    """Append-only feedback and action log (see the module docstring)."""

    def __init__(self, url: str, *, retries: int = 50) -> None:
        self.url = url
        self.retries = retries
        sqlite = url.startswith("sqlite")
        if sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {},
            pool_pre_ping=True)
        if sqlite:
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.close()
        try:
            self._migrate()
        except DatabaseError as err:
            from sqlalchemy.engine import make_url

            shown = make_url(url).render_as_string(hide_password=True)
            if sqlite and "file is not a database" in str(err).lower():
                where = url.split("///", 1)[-1]
                msg = (f"{where} is not a feedback database ({getattr(err, 'orig', err)}): it "
                       "was overwritten or belongs to something else. Nothing was changed; move "
                       f"it aside (e.g. `mv {where} {where}.bad`) and feedback starts a new store")
                raise InputError(msg) from err
            if isinstance(err, OperationalError) and "locked" in str(err).lower():
                raise
            msg = (f"the feedback store {shown} cannot be opened ({getattr(err, 'orig', err)}); "
                   "check that the file or server exists and is readable and writable "
                   "(DISCOVERY_FEEDBACK_URL)")
            raise InputError(msg) from err

    def _retry(self, fn: Any) -> Any:
        delay = 0.01
        for attempt in range(self.retries):
            try:
                return fn()
            except OperationalError as err:  # "database is locked" under heavy contention
                if "locked" not in str(err).lower() or attempt == self.retries - 1:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        return None

    def _migrate(self) -> None:
        def run() -> None:
            with self.engine.begin() as conn:
                conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version "
                                  "(version INTEGER NOT NULL)"))
                row = conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar()
                current = int(row or 0)
                for version in sorted(v for v in MIGRATIONS if v > current):
                    for stmt in MIGRATIONS[version]:
                        conn.execute(text(stmt))
                    conn.execute(text("INSERT INTO schema_version (version) VALUES (:v)"),
                                 {"v": version})

        self._retry(run)

    @property
    def version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT MAX(version) FROM schema_version")).scalar())

    def add(self, item: FeedbackItem) -> int:
        """Store one item; returns its id."""
        return self._insert("feedback", {
            k: getattr(item, k) for k in ("created", "run_id", "target_kind", "target_id",
                                          "verdict", "reason", "note", "author", "client")})

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        """Insert one row (with retries under lock contention); returns its id."""
        cols = ", ".join(row)
        stmt = text(f"INSERT INTO {table} ({cols}) VALUES ({', '.join(':' + c for c in row)})")

        def run() -> int:
            with self.engine.begin() as conn:
                res = conn.execute(stmt, row)
                return int(res.lastrowid) if res.lastrowid is not None else -1

        return self._retry(run)

    def log_action(self, run_id: str, action: str, *, feedback_id: int | None = None,
                   detail: str = "", child_run: str | None = None) -> int:
        """Record what a piece of feedback caused (audit trail)."""
        return self._insert("actions", {
            "created": datetime.now(UTC).isoformat(timespec="seconds"), "run_id": run_id,
            "action": action, "feedback_id": feedback_id, "detail": detail,
            "child_run": child_run})

    def items(self, run_id: str | None = None) -> pd.DataFrame:
        """All feedback (of one run when ``run_id`` is given), oldest first."""
        q = "SELECT * FROM feedback" + (" WHERE run_id = :r" if run_id else "") + " ORDER BY id"
        with self.engine.connect() as conn:
            return pd.read_sql(text(q), conn, params={"r": run_id} if run_id else None)

    def actions(self, run_id: str | None = None) -> pd.DataFrame:
        q = "SELECT * FROM actions" + (" WHERE run_id = :r" if run_id else "") + " ORDER BY id"
        with self.engine.connect() as conn:
            return pd.read_sql(text(q), conn, params={"r": run_id} if run_id else None)
