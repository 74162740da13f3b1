"""The budget service: the one place a run talks to the ledger and holds the subject-key secret.

Under Ray it runs as a single actor pinned to the driver's node, so neither the ledger's
credentials nor the HMAC secret travel to workers; workers send it plain facts (a
labeled subject key computed on the driver, or the input's sha256 and the face box for an
unlabeled face) and get back a reservation token. Without Ray it is a plain object.

Contract: :meth:`reserve` is called after detection and before any noise is drawn;
:meth:`commit` after the record's output is written (or right away when the record is
dropped: every draw is charged, released or not). A refused reservation means no noise
is drawn and the record is ``budget_exhausted``.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict


class BudgetService:
    MAX_REMEMBERED = 200_000
    def __init__(self, ledger: str, max_epsilon: float, max_delta: float, key_env: str, key_file: str | None,
                 create_key: bool = False, key_from_driver: bool = False):
        import os

        from deid.privacy.keys import SubjectKeyer, load_secret, write_new_secret
        from deid.privacy.ledger import Ledger

        if key_from_driver:
            self._keyer = None  # the driver reads the secret and hands it over: use_key()
        else:
            if create_key and key_file and not os.environ.get(key_env, "").strip() and not os.path.exists(key_file):
                write_new_secret(key_file)
            self._keyer = SubjectKeyer(load_secret(key_env, key_file))
        self._ledger = Ledger.open(ledger, max_epsilon=max_epsilon, max_delta=max_delta)
        self._open: dict[str, object] = {}
        # Outputs written in this service's lifetime, per (run, attempt record id): what a
        # retried task may adopt. Bounded: retries concern the batches in flight, not history.
        self._written: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()

    def reserve(self, run_id: str, record_id: str, subject_key: str | None, input_sha256: str,
                boxes: list[tuple[int, int, int, int]], release, adopt: bool = True) -> dict:
        """Reserve one charge per face. Labeled records charge every face to the labeled
        subject (conservative: the label may name any of them); unlabeled faces are charged
        to a key derived from the source content (same source face -> same key).

        A retried task (its actor died) reserves a record again. When an earlier attempt of
        it in this run was written and committed, the answer is ``adopt``: the worker takes
        that output (verified by sha256) and nothing new is drawn or charged; with
        ``adopt=False`` (the output was gone) or when the earlier attempt never committed
        (it may have drawn noise), this draw is charged as a new release, ``#attempt-N``.
        ``release`` is the method's per-face :class:`deid.facts.DpRelease`, or a tuple of them
        when each face is released several times (the ``attribute`` method: one per attribute);
        the ledger then holds one charge per face and release (``face_index`` counts charges:
        face i's j-th release is ``i * len(release) + j``)."""
        from deid.privacy.accountant import Charge

        cs = Charge.all_of(release)
        keys = [subject_key or self._keyer.from_content(input_sha256, tuple(int(v) for v in b)) for b in boxes]
        items = [(k, c) for k in keys for c in cs]
        per_face = len(cs)
        with self._lock:
            res = self._ledger.reserve(run_id, record_id, items)
            attempt = 1
            while res.ok and res.replayed:
                written = self._written.get((run_id, res.record_id))
                if adopt and written is not None and res.state == "committed":
                    return {"ok": True, "token": None, "spent_after": list(res.face_spent_after)[per_face - 1::per_face],
                            "reason": None, "adopt": written}
                attempt += 1
                res = self._ledger.reserve(run_id, f"{record_id}#attempt-{attempt}", items)
            if not res.ok:
                return {"ok": False, "token": None, "spent_after": None,
                        "reason": f"subject budget exhausted ({len(res.exceeded)} subject(s) would exceed the cap)"}
            token = uuid.uuid4().hex
            self._open[token] = res
            return {"ok": True, "token": token, "spent_after": list(res.face_spent_after)[per_face - 1::per_face], "reason": None}

    def commit(self, token: str, written: dict | None = None) -> None:
        """Commit a reservation; ``written`` (status, output_uri, output_sha256) when the
        record's output was written, so that a retry of it can adopt that output."""
        with self._lock:
            res = self._open.pop(token)
            self._ledger.commit(res)
            if written:
                self._written[(res.run_id, res.record_id)] = dict(written)
                while len(self._written) > self.MAX_REMEMBERED:
                    self._written.popitem(last=False)

    def use_key(self, secret: bytes) -> str:
        """Take the subject-key secret from the driver; return its public key id.

        Under Ray this is a direct call from the driver to this actor on the driver's node.
        A ``runtime_env`` variable was written to the runtime-env agent's log (measured), and an
        actor argument is part of the creation task the GCS keeps; a call's arguments go to the
        actor alone (tests/test_cluster.py checks that no file of either node holds the secret)."""
        from deid.privacy.keys import SubjectKeyer, key_id

        self._keyer = SubjectKeyer(bytes(secret))
        return key_id(bytes(secret))

    def labeled_key(self, subject: str) -> str:
        return self._keyer.labeled(subject)

    def would_exceed(self, subject_key: str, release) -> bool:
        from deid.privacy.accountant import Charge, would_exceed

        with self._lock:
            hist = self._ledger.history(subject_key)
        return would_exceed(hist, list(Charge.all_of(release)), self._ledger.max_epsilon, self._ledger.max_delta)

    def ping(self) -> bool:
        return True


def call(service, method: str, *args):
    """Call a service method on a plain object or a Ray actor handle alike."""
    fn = getattr(service, method)
    if hasattr(fn, "remote"):
        import ray

        return ray.get(fn.remote(*args))
    return fn(*args)
