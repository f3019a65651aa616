"""The shell's one error type: a user error, printed as one line naming the input, exit status 2.

It lives apart from `main` so that command modules can raise it without importing the module that
imports them.
"""

from __future__ import annotations

EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""
