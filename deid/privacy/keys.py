"""Subject keys: the names under which the ledger charges a person, as keyed hashes.

Contract
========

* A subject key is ``HMAC-SHA256(secret, domain-separated message)`` in hex (64 chars).
  The ledger, the audit and the CLI only ever see keys; a name cannot be read back from
  a key, and without the secret a key cannot be confirmed by guessing names.
* Labeled faces: :meth:`SubjectKeyer.labeled` hashes the subject id from the side table
  (Unicode NFC, surrounding whitespace removed; case is kept, ids are compared as given).
* Unlabeled faces: :meth:`SubjectKeyer.from_content` hashes the source's SHA-256 and the
  face box, so the same source bytes with the same face box give the same key and
  re-releasing a source charges that key again. The key follows the *face occurrence*,
  not the person: the same person in another photo is another key, and a different
  detector configuration that moves the box gives another key.
* The two message kinds are domain-separated (a labeled subject can never collide with a
  content key by construction of its input), and versioned (``v1``).
* The secret is loaded by :func:`load_secret`, never generated implicitly: losing it would
  orphan every budget in the ledger (the same person would get a fresh key, i.e. a fresh
  budget). ``deid budget init-key PATH`` (:func:`write_new_secret`) makes one on purpose.
* :func:`key_id` is a public fingerprint of the secret, safe to print and store, so a
  ledger or an audit can say which secret its keys were made with.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from pathlib import Path

DEFAULT_ENV_VAR = "DEID_SUBJECT_KEY"
#: Shortest secret accepted, in bytes (``init-key`` writes 64 hex characters).
MIN_SECRET_BYTES = 16

_LABELED = b"deid/subject-key/v1/labeled\x00"
_CONTENT = b"deid/subject-key/v1/content\x00"
_KEY_ID = b"deid/subject-key/v1/key-id"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class SubjectKeyError(ValueError):
    """The subject-key secret is missing or unusable."""


def _how_to_create(env_var: str) -> str:
    return (
        f"create one with `deid budget init-key PATH` (a new random key, mode 0600) and point "
        f"deid at it (key file setting, or `export {env_var}=\"$(cat PATH)\"`). Keep it with the "
        f"ledger's backups: a lost key orphans every subject budget in the ledger."
    )


def _check_secret(secret: bytes, where: str) -> bytes:
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"subject-key secret must be bytes, got {type(secret).__name__}")
    secret = bytes(secret)
    if len(secret) < MIN_SECRET_BYTES:
        raise SubjectKeyError(
            f"{where}: subject-key secret is {len(secret)} bytes, need at least {MIN_SECRET_BYTES}; "
            f"{_how_to_create(DEFAULT_ENV_VAR)}"
        )
    return secret


class SubjectKeyer:
    """Turns subject ids and face occurrences into ledger keys under one secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = _check_secret(secret, "SubjectKeyer")

    def __repr__(self) -> str:  # never print the secret
        return f"SubjectKeyer(key_id={self.key_id!r})"

    @property
    def key_id(self) -> str:
        return key_id(self._secret)

    def _mac(self, message: bytes) -> str:
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def labeled(self, subject: str) -> str:
        """Key of a labeled subject (the id from the side table)."""
        if not isinstance(subject, str):
            raise TypeError(f"subject must be a str, got {type(subject).__name__}")
        norm = unicodedata.normalize("NFC", subject).strip()
        if not norm:
            raise ValueError("empty subject id: use from_content() for unlabeled faces")
        return self._mac(_LABELED + norm.encode("utf-8"))

    def from_content(self, input_sha256: str, box: tuple[int, int, int, int]) -> str:
        """Key of an unlabeled face: source SHA-256 (hex) and face box (x0, y0, x1, y1)."""
        sha = str(input_sha256).strip().lower()
        if not _SHA256_HEX.match(sha):
            raise ValueError(f"input_sha256 must be 64 hex characters, got {input_sha256!r}")
        coords = tuple(box)
        if len(coords) != 4:
            raise ValueError(f"box must have 4 coordinates (x0, y0, x1, y1), got {box!r}")
        ints = []
        for v in coords:
            if isinstance(v, bool) or int(v) != v:
                raise ValueError(f"box coordinates must be integers, got {box!r}")
            ints.append(int(v))
        return self._mac(_CONTENT + sha.encode("ascii") + b"\x00" + ",".join(map(str, ints)).encode("ascii"))


def key_id(secret: bytes) -> str:
    """Public fingerprint of a subject-key secret (16 hex chars); reveals nothing of it."""
    return hmac.new(bytes(secret), _KEY_ID, hashlib.sha256).hexdigest()[:16]


def load_secret(env_var: str = DEFAULT_ENV_VAR, key_file: str | os.PathLike | None = None) -> bytes:
    """The subject-key secret: ``$env_var`` if set and non-empty, else ``key_file``.

    Raises :class:`SubjectKeyError` (saying how to create one) when neither is there; it
    never makes up a secret.
    """
    val = os.environ.get(env_var, "")
    if val.strip():
        return _check_secret(val.strip().encode("utf-8"), f"${env_var}")
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            data = path.read_bytes().strip()
        except FileNotFoundError:
            raise SubjectKeyError(f"subject-key file {path} does not exist; {_how_to_create(env_var)}") from None
        if not data:
            raise SubjectKeyError(f"subject-key file {path} is empty; {_how_to_create(env_var)}")
        return _check_secret(data, str(path))
    raise SubjectKeyError(f"no subject-key secret: ${env_var} is not set and no key file was given; "
                          f"{_how_to_create(env_var)}")


def write_new_secret(path: str | os.PathLike) -> str:
    """Write a new random secret (64 hex chars) to ``path`` with mode 0600; return its key id.

    Refuses to overwrite an existing file (that would orphan the budgets keyed with it).
    """
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SubjectKeyError(f"{path} already exists: not overwriting a subject-key secret") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may not have been applied as asked; make sure
        with os.fdopen(fd, "wb") as f:
            f.write(secret + b"\n")
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return key_id(secret)
