"""The one exception type for mistakes a user can fix (a wrong path, flag or file).

Library code raises it (or ``ValueError`` / ``FileNotFoundError`` naming the file at fault);
only the entry points turn it into a one-line message and an exit code, so a program that
embeds the library (the challenge platform, a notebook) is never killed by ``SystemExit``.
"""
from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, described in one line that names the file or value."""
