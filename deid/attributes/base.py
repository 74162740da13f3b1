"""The attribute plug-in contract: what an estimator is given and what it returns.

* An attribute is categorical: a name and its values (:class:`AttributeSpec`); ``ordered``
  attributes (age bands, yaw bands) have values in order, which PPAS compares by the earth
  mover's distance instead of total variation.
* An estimator (the factory's product) has ``specs`` (the attributes it estimates) and
  ``estimate(rgb, faces) -> list[dict[str, Estimate]]``: one mapping per face, in the order of
  the faces, from attribute name to its :class:`Estimate`. A face it cannot estimate (no
  landmarks found) gets an empty mapping, never a guess.
* An :class:`Estimate` is the estimated value (an index into the spec's values) and a
  probability vector over the values (the model's, or one-hot where the estimate is a
  measurement). Estimates are the *true* (private) attributes of a face: they go to
  :func:`deid.anonymize.ppas.select` and nowhere else (not the audit, not the logs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    values: tuple[str, ...]
    ordered: bool = False

    def __post_init__(self) -> None:
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"attribute {self.name!r}: needs at least two distinct values, got {self.values}")

    @property
    def k(self) -> int:
        return len(self.values)

    def index(self, value: str) -> int:
        try:
            return self.values.index(value)
        except ValueError:
            raise ValueError(f"attribute {self.name!r} has no value {value!r} (values: {', '.join(self.values)})") \
                from None


@dataclass(frozen=True)
class Estimate:
    """One face's estimate of one attribute: ``value`` indexes ``spec.values``; ``probs`` sums to 1."""

    spec: AttributeSpec
    value: int
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=np.float64)
        if p.shape != (self.spec.k,) or not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1) > 1e-6:
            raise ValueError(f"attribute {self.spec.name!r}: probs must be {self.spec.k} probabilities summing "
                             f"to 1, got {self.probs}")
        if not 0 <= int(self.value) < self.spec.k:
            raise ValueError(f"attribute {self.spec.name!r}: value index {self.value} out of range")
        object.__setattr__(self, "value", int(self.value))
        object.__setattr__(self, "probs", tuple(float(x) for x in p / p.sum()))

    @property
    def label(self) -> str:
        return self.spec.values[self.value]

    @classmethod
    def point(cls, spec: AttributeSpec, value: int) -> "Estimate":
        """A measured value: probability 1 on it."""
        probs = [0.0] * spec.k
        probs[int(value)] = 1.0
        return cls(spec, int(value), tuple(probs))


class AttributeParams(BaseModel):
    """Params every attribute plug-in accepts (none yet); plug-ins subclass it."""

    model_config = ConfigDict(extra="forbid")


def bands(edges: list[int] | tuple[int, ...], unit: str = "") -> tuple[str, ...]:
    """Labels of the bands cut at ``edges``: ``[20, 30]`` -> ``<20``, ``20-29``, ``30+``."""
    e = [int(x) for x in edges]
    if not e or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError(f"band edges must be increasing, got {edges}")
    return (f"<{e[0]}{unit}", *(f"{a}-{b - 1}{unit}" for a, b in zip(e, e[1:])), f"{e[-1]}+{unit}")
