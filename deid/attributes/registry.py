"""The attribute registry (deid.plugins): every attribute estimator registers here.

An attribute plug-in is one module in this package (or a third-party module behind a
``deid.plugins`` entry point) that registers a :class:`deid.plugins.Plugin` of kind
``attribute``: its params model subclasses :class:`deid.attributes.base.AttributeParams`, its
factory takes the validated params and returns an estimator (``specs``, ``estimate(rgb,
faces)``; :mod:`deid.attributes.base`).
"""

from __future__ import annotations

from typing import Any

from deid.plugins import Registry

ATTRIBUTES = Registry("attribute", "deid.attributes")


def make_estimator(name: str, params: Any = None):
    """Build the attribute estimator ``name`` with ``params`` (a dict, a params instance or None)."""
    try:
        plugin = ATTRIBUTES.get(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    return plugin.build(params)
