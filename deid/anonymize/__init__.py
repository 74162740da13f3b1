"""Anonymization methods; all share :class:`deid.anonymize.base.Anonymizer`."""

from deid.anonymize.base import Anonymizer, FaceFacts
from deid.anonymize.classical import Blur, Mask, Pixelate
from deid.anonymize.params import DP_METHODS, LATENT_METHODS

METHODS = {"blur": Blur, "pixelate": Pixelate, "mask": Mask, "dp-image": None, "deepblur": None}


def make_anonymizer(method: str, params: dict | None = None, latent: dict | str | None = None) -> Anonymizer:
    """Build a method; ``latent`` is the latent model spec of the latent-space methods."""
    if method == "dp-image":
        from deid.anonymize.latent import DPImage

        return DPImage(params, latent)
    if method == "deepblur":
        from deid.anonymize.latent import DeepBlur

        return DeepBlur(params, latent)
    try:
        cls = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown anonymize.method {method!r} (known: {', '.join(METHODS)})") from None
    return cls(params)


__all__ = ["DP_METHODS", "LATENT_METHODS", "Anonymizer", "FaceFacts", "METHODS", "make_anonymizer"]
