"""The driver's one error type."""


class RunError(Exception):
    """The run cannot start as configured (the message says why and what to change)."""
