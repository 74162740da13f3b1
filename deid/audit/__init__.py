"""Audit manifest: identity-distance checks, schema and writer."""

from deid.audit.schema import AUDIT_SCHEMA, STATUSES
from deid.audit.writer import AuditWriter, read_audit

__all__ = ["AUDIT_SCHEMA", "STATUSES", "AuditWriter", "read_audit"]
