"""The budget ledger on real SQLite files, with real processes: caps, record atomicity,
crashes, concurrent runs, idempotency; subject keys; the ``deid budget`` CLI."""

from __future__ import annotations

import json
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deid.privacy.accountant import Charge, compose
from deid.privacy.keys import SubjectKeyer, SubjectKeyError, key_id, load_secret
from deid.privacy.ledger import Ledger, LedgerError, Refused, Reservation

REPO = Path(__file__).resolve().parents[1]
SECRET = b"test-subject-secret-0123456789abcdef"
KEYS = SubjectKeyer(SECRET)
ALICE, BOB, CAROL = KEYS.labeled("alice"), KEYS.labeled("bob"), KEYS.labeled("carol")


def lap(eps: float) -> Charge:
    return Charge("laplace", eps, 0.0, 1.0, 1.0 / eps)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger" / "budget.db"


@pytest.fixture
def ledger(db: Path):
    with Ledger.open(db, max_epsilon=3.0, max_delta=0.0) as led:
        yield led


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _python(script: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ------------------------------------------------------------------ reserve / commit
def test_reserve_commit_spent(ledger: Ledger, db: Path):
    r = ledger.reserve("run1", "rec1", [(ALICE, lap(1.0)), (BOB, lap(0.5))])
    assert isinstance(r, Reservation) and r.ok and not r.replayed
    assert r.subject_keys == (ALICE, BOB) and len(r.charge_ids) == 2
    assert r.spent_after == {ALICE: (1.0, 0.0), BOB: (0.5, 0.0)}
    assert r.face_spent_after == (1.0, 0.5)
    assert ledger.spent(ALICE) == (1.0, 0.0)
    assert _rows(db, "SELECT DISTINCT state FROM charges") == [("reserved",)]
    ledger.commit(r)
    ledger.commit(r)  # idempotent
    assert _rows(db, "SELECT DISTINCT state FROM charges") == [("committed",)]
    assert all(t is not None for (t,) in _rows(db, "SELECT committed_at FROM charges"))
    assert ledger.spent(ALICE) == (1.0, 0.0) and ledger.spent(CAROL) == (0.0, 0.0)
    s = {row.subject_key: row for row in ledger.summary()}
    assert s[BOB].eps_spent == 0.5 and s[BOB].eps_remaining == 2.5 and s[BOB].n_charges == 1
    assert s[BOB].n_reserved_uncommitted == 0


def test_cap_refusal_exactly_at_the_boundary(ledger: Ledger, db: Path):
    for i in range(3):
        r = ledger.reserve("run1", f"rec{i}", [(ALICE, lap(1.0))])
        assert r.ok, r
        ledger.commit(r)
    assert ledger.spent(ALICE) == (3.0, 0.0)
    r = ledger.reserve("run1", "rec3", [(ALICE, lap(1.0))])
    assert isinstance(r, Refused) and not r.ok
    assert r.exceeded == ((ALICE, 4.0, 0.0),)
    assert ledger.spent(ALICE) == (3.0, 0.0)
    assert _rows(db, "SELECT count(*) FROM charges") == [(3,)]
    # a smaller charge does not fit either: the budget is exactly spent
    assert not ledger.reserve("run1", "rec4", [(ALICE, lap(1e-9))]).ok
    assert ledger.summary()[0].eps_remaining == 0.0


def test_record_level_atomicity(ledger: Ledger, db: Path):
    ledger.commit(ledger.reserve("run1", "a", [(ALICE, lap(2.5))]))
    # two faces: bob fits, alice would exceed -> nothing of the record is reserved
    r = ledger.reserve("run1", "group", [(BOB, lap(1.0)), (ALICE, lap(1.0))])
    assert isinstance(r, Refused)
    assert [k for k, _, _ in r.exceeded] == [ALICE]
    assert ledger.spent(BOB) == (0.0, 0.0)
    assert ledger.spent(ALICE) == (2.5, 0.0)
    assert _rows(db, "SELECT count(*) FROM charges WHERE record_id = 'group'") == [(0,)]
    assert [s.subject_key for s in ledger.summary()] == [ALICE]  # bob's subject row rolled back too
    # the same subject twice in one record is charged twice
    r = ledger.reserve("run1", "mirror", [(BOB, lap(1.0)), (BOB, lap(1.5))])
    assert r.ok and r.spent_after[BOB] == (2.5, 0.0)


def test_idempotent_re_reserve(ledger: Ledger, db: Path):
    faces = [(ALICE, lap(1.0)), (BOB, lap(1.0))]
    r1 = ledger.reserve("run1", "rec", faces)
    r2 = ledger.reserve("run1", "rec", faces)
    assert r2.replayed and r2.charge_ids == r1.charge_ids and r2.state == "reserved"
    assert ledger.spent(ALICE) == (1.0, 0.0)
    ledger.commit(r2)
    r3 = ledger.reserve("run1", "rec", faces)
    assert r3.state == "committed" and r3.charge_ids == r1.charge_ids
    assert _rows(db, "SELECT count(*) FROM charges") == [(2,)]
    # another run releasing the same record draws new noise: charged again
    assert ledger.reserve("run2", "rec", faces).ok
    assert ledger.spent(ALICE) == (2.0, 0.0)
    # the same (run, record) with other facts is an error, not a second charge
    with pytest.raises(LedgerError, match="other facts"):
        ledger.reserve("run1", "rec", [(ALICE, lap(0.5)), (BOB, lap(1.0))])
    with pytest.raises(LedgerError, match="other facts"):
        ledger.reserve("run1", "rec", faces[:1])
    # an idempotent retry even when the subject is now at its cap
    ledger.reserve("run3", "rec", [(ALICE, lap(1.0))])
    assert ledger.spent(ALICE) == (3.0, 0.0)
    assert ledger.reserve("run3", "rec", [(ALICE, lap(1.0))]).replayed


def test_names_are_not_keys(ledger: Ledger):
    with pytest.raises(ValueError, match="keyed hash"):
        ledger.reserve("run1", "rec", [("alice", lap(1.0))])
    with pytest.raises(ValueError, match="keyed hash"):
        ledger.reserve("run1", "rec", [(ALICE.upper(), lap(1.0))])


def test_commit_checks_the_reservation(ledger: Ledger):
    with pytest.raises(TypeError):
        ledger.commit(Refused("run1", "rec", ()))  # type: ignore[arg-type]
    fake = Reservation("run1", "rec", (12345,), (ALICE,), {})
    with pytest.raises(LedgerError, match="not in this ledger"):
        ledger.commit(fake)
    empty = ledger.reserve("run1", "noface", [])
    assert empty.ok and empty.charge_ids == ()
    ledger.commit(empty)


def test_wal_mode_and_durable_settings(ledger: Ledger, db: Path):
    assert ledger.journal_mode() == "wal"
    assert _rows(db, "PRAGMA journal_mode") == [("wal",)]  # persistent in the file itself


def test_gaussian_charges_are_reported_at_max_delta(db: Path):
    from deid.privacy.mechanisms import calibrate_gaussian

    g = Charge.of(calibrate_gaussian(2.0, 1e-5, 1.0, 8))  # discrete Gaussian, OpenDP-certified
    with Ledger.open(db, max_epsilon=5.0, max_delta=1e-5) as led:
        r = led.reserve("run1", "rec", [(ALICE, lap(1.0)), (ALICE, g)])
        assert r.ok
        eps, delta = led.spent(ALICE)
        assert delta == 1e-5
        assert eps == compose([lap(1.0), g], target_delta=1e-5)[0]
        assert 2.0 < eps < 1.0 + g.epsilon  # joint RDP (zCDP + Laplace), below the basic-composition sum
        assert led.reserve("run1", "rec2", [(ALICE, g)]).ok  # a second Gaussian: RDP alone
        assert led.spent(ALICE)[0] == compose([lap(1.0), g, g], target_delta=1e-5)[0] > eps
    # a ledger with no delta budget never admits a Gaussian release
    with Ledger.open(db.with_name("pure.db"), max_epsilon=100.0, max_delta=0.0) as led:
        assert not led.reserve("run1", "rec", [(ALICE, g)]).ok


def test_open_paths_urls_and_recorded_caps(db: Path, tmp_path: Path):
    with Ledger.open(f"sqlite:///{db}", max_epsilon=2.0, max_delta=1e-6) as led:
        led.reserve("run1", "rec", [(ALICE, lap(1.0))])
    with Ledger.open(db) as led:  # no caps: the ledger's recorded policy
        assert (led.max_epsilon, led.max_delta) == (2.0, 1e-6)
        assert led.spent(ALICE) == (1.0, 0.0)
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(tmp_path / "missing.db", 1.0, 0.0, create=False)
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(LedgerError, match="in-memory"):
        Ledger.open("sqlite://", 1.0, 0.0)
    with pytest.raises(ValueError, match="max_epsilon"):
        Ledger.open(db, 0.0, 0.0)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(LedgerError, match="not a deid ledger"):
        Ledger.open(other, 1.0, 0.0, create=False)


# ------------------------------------------------------------------ crashes
def test_crash_between_reserve_and_commit_counts_as_spent(db: Path):
    Ledger.open(db, max_epsilon=3.0, max_delta=0.0).close()
    child = _python(
        """
        import os, signal, sys
        from deid.privacy.accountant import Charge
        from deid.privacy.ledger import Ledger
        led = Ledger.open(sys.argv[1], 3.0, 0.0)
        r = led.reserve("crashed-run", "rec0", [(sys.argv[2], Charge("laplace", 2.0, 0.0, 1.0, 0.5))])
        print("reserved", r.ok, r.charge_ids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # dies before commit
        led.commit(r)
        print("committed", flush=True)
        """,
        str(db), ALICE,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert "reserved True" in out and "committed" not in out
    with Ledger.open(db, max_epsilon=3.0, max_delta=0.0) as led:
        assert led.spent(ALICE) == (2.0, 0.0)
        (row,) = led.summary()
        assert row.n_charges == 1 and row.n_reserved_uncommitted == 1
        assert not led.reserve("next-run", "rec0", [(ALICE, lap(1.5))]).ok  # the crashed draw is spent
        assert led.reserve("next-run", "rec0", [(ALICE, lap(1.0))]).ok


def test_crash_inside_a_reservation_leaves_nothing_and_no_lock(db: Path):
    Ledger.open(db, max_epsilon=3.0, max_delta=0.0).close()
    child = _python(
        """
        import os, signal, sys
        from deid.privacy import ledger as L
        from deid.privacy.accountant import Charge
        import sqlalchemy as sa
        led = L.Ledger.open(sys.argv[1], 3.0, 0.0)
        def die(self, *exc):  # killed after the INSERT, before COMMIT
            n = self._conn.execute(sa.text("SELECT count(*) FROM charges")).scalar()
            print("dying with", n, "uncommitted rows", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        L._Tx.__exit__ = die
        led.reserve("crashed-run", "rec0", [(sys.argv[2], Charge("laplace", 2.0, 0.0, 1.0, 0.5))])
        """,
        str(db), ALICE,
    )
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert "dying with 1 uncommitted rows" in out
    with Ledger.open(db, max_epsilon=3.0, max_delta=0.0, busy_timeout_s=5) as led:
        assert led.spent(ALICE) == (0.0, 0.0)
        assert led.reserve("next-run", "rec0", [(ALICE, lap(3.0))]).ok  # not wedged


# ------------------------------------------------------------------ concurrency
HAMMER = """
import os, sys, time
from deid.privacy.accountant import Charge
from deid.privacy.ledger import Ledger
path, run, key, go = sys.argv[1:5]
led = Ledger.open(path, 30.0, 0.0)
one = Charge("laplace", 1.0, 0.0, 1.0, 1.0)
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
ok = [led.reserve(run, f"rec{i}", [(key, one)]).ok for i in range(50)]
print(sum(ok), "".join("x" if o else "." for o in ok), flush=True)
"""


def test_concurrent_processes_never_overspend_one_subject(db: Path, tmp_path: Path):
    Ledger.open(db, max_epsilon=30.0, max_delta=0.0).close()
    go = tmp_path / "go"
    procs = [_python(HAMMER, str(db), f"run{i}", ALICE, str(go)) for i in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        n, pattern = out.split()
        results.append((int(n), pattern))
    assert sum(n for n, _ in results) == 30, results
    assert _rows(db, "SELECT count(*), sum(epsilon) FROM charges") == [(30, 30.0)]
    with Ledger.open(db, 30.0, 0.0) as led:
        assert led.spent(ALICE) == (30.0, 0.0)


# ------------------------------------------------------------------ keys
def test_subject_keys():
    other = SubjectKeyer(b"another-secret-0123456789abcdef!")
    assert KEYS.labeled("alice") == ALICE
    assert KEYS.labeled(" alice ") == ALICE          # surrounding whitespace is not identity
    assert KEYS.labeled("Alice") != ALICE            # ids are compared as given
    assert other.labeled("alice") != ALICE
    assert len(ALICE) == 64 and int(ALICE, 16) >= 0
    assert "alice" not in ALICE and "alice" not in repr(KEYS)
    assert SECRET.decode() not in repr(KEYS)
    sha = "ab" * 32
    k = KEYS.from_content(sha, (10, 20, 110, 140))
    assert KEYS.from_content(sha.upper(), (10, 20, 110, 140)) == k
    assert KEYS.from_content(sha, (10, 20, 110, 141)) != k
    assert KEYS.from_content("cd" * 32, (10, 20, 110, 140)) != k
    assert other.from_content(sha, (10, 20, 110, 140)) != k
    assert k not in {KEYS.labeled(f"{sha}\x0010,20,110,140"), KEYS.labeled(sha)}  # domains separated
    with pytest.raises(ValueError):
        KEYS.from_content("not-a-hash", (0, 0, 1, 1))
    with pytest.raises(ValueError):
        KEYS.from_content(sha, (0, 0, 1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        KEYS.labeled("   ")
    with pytest.raises(SubjectKeyError):
        SubjectKeyer(b"short")
    assert key_id(SECRET) == KEYS.key_id != key_id(b"another-secret-0123456789abcdef!")
    assert len(key_id(SECRET)) == 16


def test_load_secret(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("DEID_SUBJECT_KEY", raising=False)
    with pytest.raises(SubjectKeyError, match="init-key"):
        load_secret()
    with pytest.raises(SubjectKeyError, match="does not exist"):
        load_secret(key_file=tmp_path / "nope.key")
    f = tmp_path / "subject.key"
    f.write_text("f" * 64 + "\n")
    assert load_secret(key_file=f) == b"f" * 64
    monkeypatch.setenv("DEID_SUBJECT_KEY", "e" * 64)
    assert load_secret(key_file=f) == b"e" * 64        # the env var wins
    monkeypatch.setenv("DEID_SUBJECT_KEY", "weak")
    with pytest.raises(SubjectKeyError, match="at least"):
        load_secret()
    assert not list(Path.home().glob(".config/deid/subject*"))  # nothing generated behind our back


# ------------------------------------------------------------------ CLI
def _deid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deid.cli.app", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_init_key(tmp_path: Path):
    path = tmp_path / "keys" / "subject.key"
    proc = _deid("budget", "init-key", str(path))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_bytes().strip()
    assert len(secret) == 64 and key_id(secret) in proc.stdout and secret.decode() not in proc.stdout
    again = _deid("budget", "init-key", str(path))
    assert again.returncode == 2 and "already exists" in again.stderr
    assert path.read_bytes().strip() == secret
    assert load_secret(env_var="DEID_TEST_UNSET_VAR", key_file=path) == secret


def test_cli_show(db: Path, tmp_path: Path):
    with Ledger.open(db, max_epsilon=3.0, max_delta=0.0) as led:
        led.commit(led.reserve("run1", "rec1", [(ALICE, lap(1.0)), (BOB, lap(3.0))]))
        led.reserve("run1", "rec2", [(ALICE, lap(0.5))])  # left uncommitted
    proc = _deid("budget", "show", "--ledger", str(db), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["max_epsilon"] == 3.0 and out["max_delta"] == 0.0
    rows = {r["subject_key"]: r for r in out["subjects"]}
    assert rows[ALICE] == {"subject_key": ALICE, "eps_spent": 1.5, "delta_spent": 0.0, "eps_remaining": 1.5,
                           "n_charges": 2, "n_reserved_uncommitted": 1}
    assert rows[BOB]["eps_remaining"] == 0.0

    proc = _deid("budget", "show", "--ledger", f"sqlite:///{db}", "--max-epsilon", "10")
    assert proc.returncode == 0, proc.stderr
    assert ALICE in proc.stdout and BOB in proc.stdout and "alice" not in proc.stdout.lower()
    assert "8.5" in proc.stdout and "1 uncommitted" in proc.stdout
    with Ledger.open(db) as led:  # show never rewrites the ledger's policy
        assert led.max_epsilon == 3.0

    missing = tmp_path / "missing.db"
    proc = _deid("budget", "show", "--ledger", str(missing))
    assert proc.returncode == 2 and "no ledger" in proc.stderr and not missing.exists()


def test_a_file_that_is_not_a_ledger_is_a_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a database\n" * 200)
    with pytest.raises(LedgerError, match=r"notes\.txt: cannot open as a deid ledger \(file is not a database\)"):
        Ledger.open(str(text), 3.0, 1e-6)
    other = tmp_path / "app.sqlite"
    con = sqlite3.connect(other)
    con.execute("create table customers (id integer primary key, name text)")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=r"app\.sqlite: is another application's SQLite database \(tables: customers\)"):
        Ledger.open(str(other), 3.0, 1e-6)
    con = sqlite3.connect(other)
    assert [r[0] for r in con.execute("select name from sqlite_master where type='table'")] == ["customers"]
    con.close()


def test_a_stored_charge_that_cannot_be_certified_is_a_ledger_error():
    """A gaussian charge stating the continuous-Gaussian epsilon (what deid wrote before it
    certified the discrete Gaussian through OpenDP's zCDP route) is not silently trusted."""
    from deid.privacy.ledger import LedgerError, _charge

    with pytest.raises(LedgerError, match=r"cannot certify \(gaussian, epsilon=1\.993.*docs/privacy\.md"):
        _charge("gaussian", 1.993, 1e-5, 1.0, 2.0)
    assert _charge("laplace", 1.0, 0.0, 2.0, 2.0).epsilon == 1.0


def test_cli_run_with_a_weak_key_says_so_without_a_traceback(tmp_path: Path):
    """A subject key under 16 bytes in $DEID_SUBJECT_KEY: `deid run` of a DP job (in process)
    stops before anything is processed, with the reason and how to make one, exit 2."""
    import os

    import yaml

    m = {"version": 1, "input": {"uri": str(REPO / "manifests" / "samples" / "lfw")},
         "output": {"uri": str(tmp_path / "out")}, "anonymize": {"method": "dp-image", "params": {"epsilon": 4}},
         "privacy": {"ledger": str(tmp_path / "ledger.sqlite"), "max_epsilon": 8}}
    job = tmp_path / "dp.yaml"
    job.write_text(yaml.safe_dump(m))
    proc = subprocess.run([sys.executable, "-m", "deid.cli.app", "run", str(job), "--inline", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DEID_SUBJECT_KEY": "demo-key"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "$DEID_SUBJECT_KEY" in proc.stderr and "init-key" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.jpg"))
