"""The recognizer and attack registries (deid.plugins) of ``deid evaluate``.

A *recognizer* plug-in registers a :class:`deid.plugins.Plugin` of kind ``recognizer``: its
factory takes the validated params and, as ``landmarker=``, the evaluator's shared
:class:`deid.evaluate.recognizers.Landmarker` (``None``: it loads its own), and returns a
:class:`deid.faces.base.Recognizer`. The evaluator hands ``locate`` each face as a
:class:`~deid.evaluate.recognizers.FaceGeometry` (its ``box`` is the audit box), once, on the
original, and embeds the original and every output with what ``locate`` returned. Evaluation
distances are Euclidean (``metrics.json`` says ``distance: euclidean``; the attacks rank by
it), so a recognizer's ``distance`` must be too. An optional ``used_by_checks`` attribute
says the network is the one deid's own checks use (its rates flatter methods tuned on it).

An *attack* plug-in registers a :class:`~deid.plugins.Plugin` of kind ``attack`` whose factory
returns a callable ``attack(orig, anon, subjects, sources) -> dict``: row ``i`` of the
embedding arrays ``orig`` and ``anon`` is the same source photo (``sources[i]``) of subject
``subjects[i]``. The result holds at least ``top1, top5, n_probes, chance_top1, chance_top5``
(``None`` where nothing was counted) and may hold ``hits_top1``, a boolean array over the
probes that is used for counts and never written. It is written under
``groups[].privacy[<recognizer>].attacks[<key>]``, ``key`` = :func:`metrics_key` of the
plug-in's name. A callable that takes a ``context`` keyword gets an :class:`AttackContext`:
the group's method and params, the recognizer's name, ``reversed`` (variant -> embeddings of
the outputs after :mod:`deid.evaluate.reversal`, rows as ``anon``; empty when none applies) and
``aware()`` (the fitted maps of :mod:`deid.evaluate.aware` and their fit report, or it raises
:class:`deid.evaluate.aware.Unavailable` with the reason).

Every registered recognizer and attack runs, in :func:`evaluation_order`. This module imports
nothing heavy: building a plug-in (:func:`make_recognizer`, :func:`make_attack`) loads models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict

from deid.plugins import Plugin, Registry

RECOGNIZERS = Registry("recognizer", "deid.evaluate")
ATTACKS = Registry("attack", "deid.evaluate")

#: where the built-in attacks stand in ``metrics.json``; any other attack follows them, by name
ATTACK_ORDER = ("T1", "same-source", "T2", "T3", "T1-classifier", "aware", "reversal")

Attack = Callable[..., dict]


class NoParams(BaseModel):
    """The params model of a plug-in that takes none."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class AttackContext:
    method: str
    params: dict
    recognizer: str
    reversed: dict = field(default_factory=dict)
    aware: Callable[[], tuple] | None = None
    skipped: str | None = None     # why the adaptive attacks do not run with this recognizer


def takes_context(attack: Attack) -> bool:
    import inspect

    try:
        return "context" in inspect.signature(attack).parameters
    except (TypeError, ValueError):
        return False


def metrics_key(name: str) -> str:
    """An attack's key in ``metrics.json`` (``T1-classifier`` -> ``T1_classifier``)."""
    return name.replace("-", "_")


def evaluation_order(registry: Registry) -> list[Plugin]:
    """The plug-ins of ``registry`` in the order evaluation runs and writes them: attacks in
    :data:`ATTACK_ORDER` first, everything else by name."""
    rank = {n: i for i, n in enumerate(ATTACK_ORDER)} if registry is ATTACKS else {}
    return sorted(registry, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def make_recognizer(name: str, params: Any = None, **context: Any):
    """Build the recognizer ``name`` (``params``: a dict, its params model or ``None``)."""
    return _plugin(RECOGNIZERS, name).build(params, **context)


def make_attack(name: str, params: Any = None) -> Attack:
    return _plugin(ATTACKS, name).build(params)


def _plugin(registry: Registry, name: str) -> Plugin:
    try:
        return registry.get(name)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
