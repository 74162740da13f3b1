"""DP mechanisms, accountant, ledger, subject keys.

``deid.privacy.keys``       subject keys (HMAC-SHA256 of ids or of source content), secrets
``deid.privacy.accountant`` per-release :class:`Charge` facts and their composition (dp-accounting)
``deid.privacy.ledger``     the durable per-subject budget ledger (reserve, then commit)

Names below are imported lazily, so ``import deid.privacy.<module>`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Charge": "deid.privacy.accountant",
    "compose": "deid.privacy.accountant",
    "would_exceed": "deid.privacy.accountant",
    "Ledger": "deid.privacy.ledger",
    "LedgerError": "deid.privacy.ledger",
    "Reservation": "deid.privacy.ledger",
    "Refused": "deid.privacy.ledger",
    "SubjectSummary": "deid.privacy.ledger",
    "SubjectKeyer": "deid.privacy.keys",
    "SubjectKeyError": "deid.privacy.keys",
    "key_id": "deid.privacy.keys",
    "load_secret": "deid.privacy.keys",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deid.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
