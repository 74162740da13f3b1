"""The privacy-budget ledger: every noisy release, charged to its subject, durably.

Contract
========

* **Storage.** A SQL database through SQLAlchemy Core: a local path means a SQLite file
  in WAL mode (``synchronous=FULL``, so a committed charge survives a power cut); any SQL
  URL (``sqlite:///path``, ``postgresql://...``) is a team ledger. In-memory databases are
  refused: a ledger that can vanish is not a ledger.
* **Keys, never names.** Charges are stored under subject keys
  (:mod:`deid.privacy.keys`: HMAC-SHA256 hex). :meth:`Ledger.reserve` refuses anything
  that is not 64 lowercase hex characters, so a name cannot be stored by mistake.
* **Reserve, then commit.** Before a record is processed, :meth:`Ledger.reserve` charges
  every face of the record to its subject; :meth:`Ledger.commit` marks them committed
  once the output is written. There is no release of a reservation: every noise draw is
  charged whether its output is released, quarantined or lost (DESIGN: gating).
* **A crash is spent.** Reserved and committed charges both count as spent, so a
  reservation left by a crashed run keeps counting. ``n_reserved_uncommitted`` in
  :meth:`Ledger.summary` shows them; nothing ever deletes them.
* **Never overspend.** A reservation is decided inside one write transaction that holds
  every subject of the record: ``BEGIN IMMEDIATE`` on SQLite (one writer per file, across
  processes), ``SELECT ... FOR UPDATE`` on the subject rows, in key order, elsewhere. Each
  subject's check is :func:`deid.privacy.accountant.would_exceed` over *all* its charges
  plus the new ones, so two concurrent runs cannot both take the last of a budget.
* **Record-level atomicity.** Either every charge of a record is reserved or none is: a
  record one of whose subjects would exceed its cap gets :class:`Refused` and writes
  nothing.
* **Idempotent.** ``(run_id, record_id, face_index)`` is unique; reserving a record that
  already has charges in that run returns the existing reservation (a retried Ray task or
  a resumed run charges nothing twice). Reserving it again with *different* facts is a
  :class:`LedgerError`.
* **Schema 2** adds the ``categories`` column and the ``kary_rr`` mechanism (attribute releases,
  :mod:`deid.anonymize.ppas`); a schema-1 ledger is migrated in place when it is opened (the
  charges table rebuilt in one transaction, every charge copied as it was).
* **Reported spend** is :func:`deid.privacy.accountant.compose` of a subject's charges at
  ``target_delta = max_delta``: ``(sum of epsilons, 0)`` for pure Laplace histories,
  ``(epsilon at max_delta, max_delta)`` once a Gaussian release is in the history (RDP
  composition of zCDP and Laplace events, or basic composition when the deltas fit; see the
  accountant).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from deid.privacy.accountant import Charge, compose, would_exceed

SCHEMA_VERSION = "2"
#: schema versions this deid opens; an older one is migrated in place when the ledger is
#: opened for writing (1 -> 2: the ``categories`` column and the ``kary_rr`` mechanism of
#: attribute releases; the charges are copied unchanged)
READABLE_VERSIONS = ("1", "2")
# (opening migrates: a ledger is opened to be charged or to be read by this deid, and the copy
# keeps every charge as it was)
STATES = ("reserved", "committed")
_KEY_RE = re.compile(r"^[0-9a-f]{64}$")

metadata = sa.MetaData()

meta_table = sa.Table(
    "deid_ledger_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

subjects = sa.Table(
    "subjects",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
)

charges = sa.Table(
    "charges",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("subject_key", sa.String(64), sa.ForeignKey("subjects.key"), nullable=False, index=True),
    sa.Column("run_id", sa.String(200), nullable=False),
    sa.Column("record_id", sa.String(200), nullable=False),
    sa.Column("face_index", sa.Integer, nullable=False),
    sa.Column("mechanism", sa.String(16), nullable=False),
    sa.Column("epsilon", sa.Double, nullable=False),
    sa.Column("delta", sa.Double, nullable=False),
    sa.Column("sensitivity", sa.Double, nullable=False),
    sa.Column("noise_scale", sa.Double, nullable=False),
    sa.Column("categories", sa.Integer, nullable=True),   # kary_rr: k; else NULL
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created", sa.DateTime(timezone=True), nullable=False),
    sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("run_id", "record_id", "face_index", name="uq_charges_run_record_face"),
    sa.CheckConstraint("state IN ('reserved', 'committed')", name="ck_charges_state"),
    sa.CheckConstraint("mechanism IN ('laplace', 'gaussian', 'kary_rr')", name="ck_charges_mechanism"),
)


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked (missing, inconsistent, misused)."""


@dataclass(frozen=True)
class Reservation:
    """Every charge of one record, reserved (or already committed, when replayed)."""

    run_id: str
    record_id: str
    charge_ids: tuple[int, ...]
    subject_keys: tuple[str, ...]          # per face, in face order
    spent_after: Mapping[str, tuple[float, float]] = field(compare=False)  # subject -> (eps, delta)
    state: str = "reserved"
    replayed: bool = False                 # True: these charges existed before this call

    ok = True

    @property
    def face_spent_after(self) -> tuple[float, ...]:
        """Epsilon spent by each face's subject after this record (audit ``subject_spent_after``)."""
        return tuple(self.spent_after[k][0] for k in self.subject_keys)


@dataclass(frozen=True)
class Refused:
    """A record withheld: at least one of its subjects would exceed the cap. Nothing was charged."""

    run_id: str
    record_id: str
    exceeded: tuple[tuple[str, float, float], ...]  # (subject_key, epsilon, delta) it would reach

    ok = False


class SubjectSummary(NamedTuple):
    subject_key: str
    eps_spent: float
    delta_spent: float
    eps_remaining: float
    n_charges: int
    n_reserved_uncommitted: int


def _now() -> datetime:
    return datetime.now(timezone.utc)


@functools.lru_cache(maxsize=65536)
def _charge(mechanism: str, epsilon: float, delta: float, sensitivity: float, noise_scale: float,
            categories: int | None = None) -> Charge:
    try:
        return Charge(mechanism, epsilon, delta, sensitivity, noise_scale, categories)  # type: ignore[arg-type]
    except ValueError as exc:
        # e.g. a gaussian charge written before deid certified the discrete Gaussian through
        # OpenDP's zCDP route: its stated epsilon is the continuous curve's, which this
        # version cannot stand behind. Fail safe, and say what the row is.
        raise LedgerError(f"the ledger holds a charge this deid cannot certify ({mechanism}, epsilon={epsilon}, "
                          f"delta={delta}, sensitivity={sensitivity}, noise_scale={noise_scale}): {exc}. "
                          "No release is charged against it; see docs/privacy.md (ledger)") from None


def _row_charge(row) -> Charge:
    k = row.categories
    return _charge(row.mechanism, float(row.epsilon), float(row.delta), float(row.sensitivity),
                   float(row.noise_scale), None if k is None else int(k))


def _to_url(url_or_path: str | os.PathLike) -> sa.URL:
    s = os.fspath(url_or_path)
    if "://" in s:
        url = sa.make_url(s)
    else:
        if s in ("", ":memory:"):
            raise LedgerError("an in-memory ledger is not durable: give a file path or a SQL URL")
        url = sa.URL.create("sqlite", database=str(Path(s).expanduser().resolve()))
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise LedgerError("an in-memory ledger is not durable: give a file path or a SQL URL")
    return url


def _check_caps(max_epsilon: float, max_delta: float) -> tuple[float, float]:
    max_epsilon, max_delta = float(max_epsilon), float(max_delta)
    if not max_epsilon > 0:  # also rejects NaN
        raise ValueError(f"max_epsilon must be > 0, got {max_epsilon}")
    if not 0.0 <= max_delta < 1.0:
        raise ValueError(f"max_delta must be in [0, 1), got {max_delta}")
    return max_epsilon, max_delta


class Ledger:
    """A per-subject budget ledger with caps ``(max_epsilon, max_delta)`` per subject."""

    def __init__(self, engine: Engine, max_epsilon: float, max_delta: float) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"
        self._pid = os.getpid()
        self.max_epsilon, self.max_delta = _check_caps(max_epsilon, max_delta)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        url_or_path: str | os.PathLike,
        max_epsilon: float | None = None,
        max_delta: float | None = None,
        *,
        create: bool = True,
        busy_timeout_s: float = 60.0,
    ) -> "Ledger":
        """Open (and with ``create``, make) a ledger at a path (SQLite) or SQL URL.

        The caps given are the ones this object enforces; they are also recorded in the
        ledger as its latest policy, which is what an open without caps (``deid budget
        show``) uses.
        """
        url = _to_url(url_or_path)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database)
            if not path.exists():
                if not create:
                    raise LedgerError(f"no ledger at {path}")
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})
            _sqlite_setup(engine, busy_timeout_s)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        try:
            try:
                caps = _init_schema(engine, create)
            except sa.exc.DatabaseError as exc:  # not SQLite, locked beyond the timeout, unreachable server
                where = engine.url.render_as_string(hide_password=True)
                reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0]
                raise LedgerError(f"{where}: cannot open as a deid ledger ({reason})") from None
            if max_epsilon is None or max_delta is None:
                if caps is None:
                    raise LedgerError("this ledger records no caps: give max_epsilon and max_delta")
                max_epsilon = caps[0] if max_epsilon is None else max_epsilon
                max_delta = caps[1] if max_delta is None else max_delta
            ledger = cls(engine, max_epsilon, max_delta)
            if caps != (ledger.max_epsilon, ledger.max_delta) and create:
                ledger._record_caps()
        except BaseException:
            engine.dispose()
            raise
        return ledger

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Ledger({self._engine.url.render_as_string(hide_password=True)!r}, "
                f"max_epsilon={self.max_epsilon}, max_delta={self.max_delta})")

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def journal_mode(self) -> str | None:
        """SQLite's journal mode (``'wal'``), or None for other databases."""
        if not self._sqlite:
            return None
        with self._engine.connect() as conn:
            return str(conn.exec_driver_sql("PRAGMA journal_mode").scalar()).lower()

    # ------------------------------------------------------------------ transactions
    def _check_pid(self) -> None:
        if os.getpid() != self._pid:
            raise LedgerError("a Ledger cannot cross a fork: open it again in this process")

    def _tx(self, write: bool) -> "_Tx":
        self._check_pid()
        return _Tx(self._engine, write)

    def _record_caps(self) -> None:
        with self._tx(write=True) as conn:
            for name, value in (("max_epsilon", self.max_epsilon), ("max_delta", self.max_delta)):
                _upsert_meta(conn, name, repr(value))

    # ------------------------------------------------------------------ charging
    def reserve(
        self, run_id: str, record_id: str, charges_: Sequence[tuple[str, Charge]]
    ) -> Reservation | Refused:
        """Reserve every charge of one record, or none of them.

        ``charges_`` holds one ``(subject_key, Charge)`` per face, in face order
        (``face_index`` is the position). Returns the :class:`Reservation`, or
        :class:`Refused` when some subject of the record would exceed the caps.
        """
        run_id, record_id = str(run_id), str(record_id)
        if not run_id or not record_id:
            raise ValueError("run_id and record_id must not be empty")
        items: list[tuple[str, Charge]] = []
        for i, item in enumerate(charges_):
            key, charge = item
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise ValueError(f"face {i}: subject key must be a keyed hash (64 lowercase hex "
                                 f"characters, see deid.privacy.keys), not a name")
            if not isinstance(charge, Charge):
                raise TypeError(f"face {i}: expected a Charge, got {type(charge).__name__}")
            items.append((key, charge))
        if not items:
            return Reservation(run_id, record_id, (), (), {}, state="committed")
        keys = sorted({k for k, _ in items})

        tx = self._tx(write=True)
        with tx as conn:
            self._lock_subjects(conn, keys)
            existing = conn.execute(
                sa.select(charges).where(charges.c.run_id == run_id, charges.c.record_id == record_id)
                .order_by(charges.c.face_index)
            ).all()
            histories = self._histories(conn, keys)
            if existing:
                return self._replay(run_id, record_id, items, existing, histories)

            new_by_key: dict[str, list[Charge]] = defaultdict(list)
            for k, c in items:
                new_by_key[k].append(c)
            exceeded, spent_after = [], {}
            for k in keys:
                eps, delta = compose([*histories[k], *new_by_key[k]], target_delta=self.max_delta)
                if would_exceed(histories[k], new_by_key[k], self.max_epsilon, self.max_delta):  # cached compose
                    exceeded.append((k, eps, delta))
                spent_after[k] = (eps, delta)
            if exceeded:
                tx.rollback_only = True  # a refusal writes nothing, subject rows included
                return Refused(run_id, record_id, tuple(exceeded))

            now = _now()
            rows = [
                dict(subject_key=k, run_id=run_id, record_id=record_id, face_index=i,
                     mechanism=c.mechanism, epsilon=c.epsilon, delta=c.delta, sensitivity=c.sensitivity,
                     noise_scale=c.noise_scale, categories=c.categories, state="reserved", created=now,
                     committed_at=None)
                for i, (k, c) in enumerate(items)
            ]
            conn.execute(sa.insert(charges), rows)
            ids = conn.execute(
                sa.select(charges.c.id).where(charges.c.run_id == run_id, charges.c.record_id == record_id)
                .order_by(charges.c.face_index)
            ).scalars().all()
        return Reservation(run_id, record_id, tuple(ids), tuple(k for k, _ in items), spent_after)

    def _replay(self, run_id, record_id, items, existing, histories) -> Reservation:
        same = len(existing) == len(items) and all(
            row.face_index == i and row.subject_key == k and _row_charge(row) == c
            for i, ((k, c), row) in enumerate(zip(items, existing))
        )
        if not same:
            raise LedgerError(
                f"run {run_id!r} record {record_id!r} is already charged with other facts "
                f"({len(existing)} charges); refusing to charge it differently"
            )
        spent_after = {k: compose(h, target_delta=self.max_delta) for k, h in histories.items()}
        state = "committed" if all(r.state == "committed" for r in existing) else "reserved"
        return Reservation(run_id, record_id, tuple(r.id for r in existing), tuple(k for k, _ in items),
                           spent_after, state=state, replayed=True)

    def _lock_subjects(self, conn: Connection, keys: list[str]) -> None:
        """Make sure the subject rows exist, then hold them until the transaction ends."""
        now = _now()
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            else:
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            conn.execute(dialect_insert(subjects).on_conflict_do_nothing(index_elements=["key"]),
                         [{"key": k, "created": now} for k in keys])
        else:
            have = set(conn.execute(sa.select(subjects.c.key).where(subjects.c.key.in_(keys))).scalars())
            for k in keys:
                if k not in have:
                    try:
                        with conn.begin_nested():
                            conn.execute(sa.insert(subjects).values(key=k, created=now))
                    except IntegrityError:
                        pass  # created by a concurrent transaction
        if dialect != "sqlite":
            # SQLite: BEGIN IMMEDIATE already holds the only write lock of the file.
            conn.execute(sa.select(subjects.c.key).where(subjects.c.key.in_(keys))
                         .order_by(subjects.c.key).with_for_update()).all()

    def _histories(self, conn: Connection, keys: Sequence[str]) -> dict[str, list[Charge]]:
        out: dict[str, list[Charge]] = {k: [] for k in keys}
        if not keys:
            return out
        rows = conn.execute(
            sa.select(charges.c.subject_key, charges.c.mechanism, charges.c.epsilon, charges.c.delta,
                      charges.c.sensitivity, charges.c.noise_scale, charges.c.categories)
            .where(charges.c.subject_key.in_(list(keys)))
        )
        for row in rows:
            out[row.subject_key].append(_row_charge(row))
        return out

    def commit(self, reservation: Reservation) -> None:
        """Mark a reservation's charges committed (its outputs are written). Idempotent."""
        if not isinstance(reservation, Reservation):
            raise TypeError(f"commit() takes a Reservation, got {type(reservation).__name__}")
        if not reservation.charge_ids:
            return
        ids = list(reservation.charge_ids)
        with self._tx(write=True) as conn:
            found = conn.execute(
                sa.select(sa.func.count()).select_from(charges)
                .where(charges.c.id.in_(ids), charges.c.run_id == reservation.run_id,
                       charges.c.record_id == reservation.record_id)
            ).scalar_one()
            if found != len(ids):
                raise LedgerError(f"reservation for run {reservation.run_id!r} record {reservation.record_id!r} "
                                  f"is not in this ledger ({found} of {len(ids)} charges found)")
            conn.execute(
                sa.update(charges).where(charges.c.id.in_(ids), charges.c.state == "reserved")
                .values(state="committed", committed_at=_now())
            )

    # ------------------------------------------------------------------ reading
    def history(self, subject_key: str) -> list[Charge]:
        """Every charge of a subject (reserved and committed)."""
        with self._tx(write=False) as conn:
            return self._histories(conn, [subject_key])[subject_key]

    def spent(self, subject_key: str) -> tuple[float, float]:
        """(epsilon, delta) spent by a subject, reserved and committed charges alike."""
        return compose(self.history(subject_key), target_delta=self.max_delta)

    def summary(self) -> list[SubjectSummary]:
        """One row per subject key (sorted by key): spent, remaining, counts."""
        with self._tx(write=False) as conn:
            keys = conn.execute(sa.select(subjects.c.key).order_by(subjects.c.key)).scalars().all()
            rows = conn.execute(
                sa.select(charges.c.subject_key, charges.c.mechanism, charges.c.epsilon, charges.c.delta,
                          charges.c.sensitivity, charges.c.noise_scale, charges.c.categories, charges.c.state)
            ).all()
        hist: dict[str, list[Charge]] = defaultdict(list)
        uncommitted: dict[str, int] = defaultdict(int)
        for row in rows:
            hist[row.subject_key].append(_row_charge(row))
            uncommitted[row.subject_key] += row.state == "reserved"
        out = []
        for k in keys:
            eps, delta = compose(hist[k], target_delta=self.max_delta)
            out.append(SubjectSummary(k, eps, delta, self.max_epsilon - eps, len(hist[k]), uncommitted[k]))
        return out


# ---------------------------------------------------------------------- plumbing
class _Tx:
    """One transaction on a fresh connection: a write transaction commits on success;
    it rolls back on error or when the body sets ``rollback_only`` (a refusal writes
    nothing). A read transaction always rolls back."""

    def __init__(self, engine: Engine, write: bool) -> None:
        self._engine, self._write = engine, write
        self.rollback_only = False

    def __enter__(self) -> Connection:
        self._conn = self._engine.connect()
        self._conn.execution_options(deid_write=self._write)
        self._conn.begin()
        return self._conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._write and not self.rollback_only:
                self._conn.commit()
            else:
                self._conn.rollback()
        finally:
            self._conn.close()


def _sqlite_setup(engine: Engine, busy_timeout_s: float) -> None:
    """pysqlite's own transaction handling is off; we issue BEGIN ourselves, IMMEDIATE for
    writes so that the check and the insert of a reservation cannot interleave with
    another process's (SQLAlchemy's documented recipe for SQLite transactions)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            mode = cur.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                warnings.warn(f"SQLite ledger could not switch to WAL mode (got {mode!r}); "
                              f"locking stays correct, concurrency is lower", RuntimeWarning, stacklevel=2)
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("deid_write") else "BEGIN")


def _upsert_meta(conn: Connection, name: str, value: str) -> None:
    updated = conn.execute(sa.update(meta_table).where(meta_table.c.name == name).values(value=value)).rowcount
    if not updated:
        conn.execute(sa.insert(meta_table).values(name=name, value=value))


def _migrate_1_to_2(engine: Engine) -> None:
    """Schema 1 -> 2 in one write transaction: the charges table rebuilt with the ``categories``
    column and the wider mechanism check (SQLite cannot alter a CHECK constraint), every row
    copied unchanged, then the version recorded. A failure leaves the ledger at version 1."""
    cols = ["id", "subject_key", "run_id", "record_id", "face_index", "mechanism", "epsilon", "delta",
            "sensitivity", "noise_scale", "state", "created", "committed_at"]
    with _Tx(engine, write=True) as conn:
        version = conn.execute(sa.select(meta_table.c.value).where(meta_table.c.name == "schema_version")).scalar()
        if version != "1":
            return  # migrated by a concurrent opener
        n = conn.execute(sa.select(sa.func.count()).select_from(sa.table("charges"))).scalar_one()
        conn.exec_driver_sql("ALTER TABLE charges RENAME TO charges_v1")
        for ix in sa.inspect(conn).get_indexes("charges_v1"):
            if ix.get("name") and not ix["name"].startswith("sqlite_"):
                conn.exec_driver_sql(f'DROP INDEX "{ix["name"]}"')
        if conn.dialect.name != "sqlite":
            for ck in ("uq_charges_run_record_face", "ck_charges_state", "ck_charges_mechanism"):
                conn.exec_driver_sql(f'ALTER TABLE charges_v1 DROP CONSTRAINT IF EXISTS "{ck}"')
        charges.create(conn)
        names = ", ".join(cols)
        conn.exec_driver_sql(f"INSERT INTO charges ({names}) SELECT {names} FROM charges_v1")
        copied = conn.execute(sa.select(sa.func.count()).select_from(charges)).scalar_one()
        if copied != n:  # pragma: no cover - the same transaction
            raise LedgerError(f"ledger migration copied {copied} of {n} charges; nothing changed")
        conn.exec_driver_sql("DROP TABLE charges_v1")
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('charges', 'id'), "
                                 "COALESCE((SELECT MAX(id) FROM charges), 0) + 1, false)")
        conn.execute(sa.update(meta_table).where(meta_table.c.name == "schema_version").values(value=SCHEMA_VERSION))


def _init_schema(engine: Engine, create: bool) -> tuple[float, float] | None:
    """Create the tables if asked and needed; check the schema version; return the
    recorded caps, if any."""
    with _Tx(engine, write=create) as conn:
        have = set(sa.inspect(conn).get_table_names())
        wanted = {t.name for t in metadata.sorted_tables}
        if not wanted <= have:
            if not create:
                raise LedgerError(f"{engine.url.render_as_string(hide_password=True)} is not a deid ledger "
                                  f"(missing tables: {', '.join(sorted(wanted - have))})")
            if have & wanted:
                raise LedgerError(f"partial deid ledger schema (have {sorted(have & wanted)}); refusing to guess")
            if have and engine.url.get_backend_name() == "sqlite":
                raise LedgerError(f"{engine.url.database}: is another application's SQLite database (tables: "
                                  f"{', '.join(sorted(have)[:5])}); refusing to add deid's ledger tables to it")
            metadata.create_all(conn)
            conn.execute(sa.insert(meta_table).values(name="schema_version", value=SCHEMA_VERSION))
        meta = dict(conn.execute(sa.select(meta_table.c.name, meta_table.c.value)).all())
    version = meta.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise LedgerError(f"ledger schema version {version!r}, this deid reads {', '.join(READABLE_VERSIONS)}")
    if version != SCHEMA_VERSION:
        _migrate_1_to_2(engine)
    if "max_epsilon" in meta and "max_delta" in meta:
        return float(meta["max_epsilon"]), float(meta["max_delta"])
    return None

