"""The driver's error types."""


class RunError(Exception):
    """The run cannot start as configured (the message says why and what to change)."""

    exit_code = 2  # `deid run`: nothing was processed


class AuditStopped(RunError):
    """The run stopped releasing images because its audit (or the local journal) could not be
    written; the rows of everything it released are in the audit or the journal, and the next
    `deid run` writes the journal to the audit before it goes on (deid.audit.journal)."""

    exit_code = 1  # `deid run`: the run started and stopped early
