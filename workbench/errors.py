"""User-facing errors.

Every problem a user can cause (bad input, missing files, unknown names) is raised as a
`WorkbenchError` whose message names the problem and the way out. The CLI prints the message and
exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """An error the user can fix; the message says what went wrong and what to do."""


class NotFoundError(WorkbenchError, KeyError):
    """A named thing (artifact, model, hook, source) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidInputError(WorkbenchError, ValueError):
    """An argument or file has the wrong form (shape, width, name, content)."""
