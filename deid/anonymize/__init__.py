"""Anonymization methods; all share :class:`deid.anonymize.base.Anonymizer`."""

from deid.anonymize.base import Anonymizer, FaceFacts
from deid.anonymize.classical import Blur, Mask, Pixelate

METHODS = {"blur": Blur, "pixelate": Pixelate, "mask": Mask}


def make_anonymizer(method: str, params: dict | None = None) -> Anonymizer:
    try:
        cls = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown anonymize.method {method!r} (known: {', '.join(METHODS)})") from None
    return cls(params)


__all__ = ["Anonymizer", "FaceFacts", "METHODS", "make_anonymizer"]
