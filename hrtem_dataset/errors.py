"""User-facing errors.

Every error caused by bad input (missing file, malformed YAML, unphysical value, unreadable image)
is raised as :class:`InputError` with a one-line message that names the offending field or file.
The CLI turns it into ``error: <message>`` on stderr and exit code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input. The message is one line and names the field or file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def format_validation_error(exc, source: str | None = None) -> str:
    """One-line summary of a pydantic ``ValidationError``: ``source: field.path: message``."""
    errors = exc.errors()
    parts = []
    for err in errors[:3]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if not str(x).startswith("function-"))
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    prefix = f"{source}: " if source else ""
    return " ".join((prefix + "; ".join(parts) + more).split())
