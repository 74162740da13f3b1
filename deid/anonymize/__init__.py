"""Anonymization methods: plug-ins of :mod:`deid.anonymize.registry`; all share
:class:`deid.anonymize.base.Anonymizer` and return :class:`deid.facts.FaceFacts`."""

from deid.anonymize.base import Anonymizer
from deid.anonymize.registry import DEFAULT_METHOD, METHODS, is_dp, make_anonymizer, needs_latent
from deid.facts import DpRelease, FaceFacts

__all__ = ["DEFAULT_METHOD", "METHODS", "Anonymizer", "DpRelease", "FaceFacts", "is_dp", "make_anonymizer",
           "needs_latent"]
