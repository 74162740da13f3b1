"""The method registry (deid.plugins): every anonymization method registers here.

A method plug-in is one module in this package (or a third-party module behind a
``deid.plugins`` entry point) that registers a :class:`deid.plugins.Plugin` of kind
``method``: its params model is what ``anonymize.params`` accepts; ``needs.latent`` says
whether it needs the run's latent model (then the factory receives it as ``latent=``, a
loaded :class:`deid.latent.LatentModel` or a manifest ``latent`` section); ``needs.dp`` that
every release is charged to the privacy ledger. The factory returns a
:class:`deid.anonymize.base.Anonymizer`.
"""

from __future__ import annotations

from typing import Any

from deid.plugins import Registry

METHODS = Registry("method", "deid.anonymize")

#: the method of a manifest that names none
DEFAULT_METHOD = "blur"


def method_plugin(name: str):
    try:
        return METHODS.get(name)
    except KeyError as exc:
        raise ValueError(f"anonymize.method: {exc.args[0]}") from None


def make_anonymizer(method: str, params: Any = None, latent: Any = None):
    """Build a method from its name and params; ``latent`` is the latent model (or its
    manifest section / spec) of the methods that need one."""
    plugin = method_plugin(method)
    if plugin.needs.latent:
        return plugin.build(params, latent=latent)
    return plugin.build(params)


def is_dp(method: str) -> bool:
    """Is every release of ``method`` charged to the privacy ledger?"""
    return method_plugin(method).needs.dp


def wants_subject_keys(method: str, params: Any = None) -> bool:
    """Does ``method`` with ``params`` take each face's subject key (its params model's
    ``wants_subject_keys()``; e.g. synthetic-swap with ``stable: keyed``)?"""
    p = method_plugin(method).validate(params if params is not None else {})
    return bool(getattr(p, "wants_subject_keys", lambda: False)())


def needs_latent(method: str) -> bool:
    return bool(method_plugin(method).needs.latent)
