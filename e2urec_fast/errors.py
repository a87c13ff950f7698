"""User-facing errors (this module imports nothing of the package).

Every problem caused by the user's input (a file, a flag, a folder) is raised as
`UserError`; the CLI prints its one-line message and exits with status 2. Writing files
(atomically, rank 0 only) is `files.py`.
"""

from __future__ import annotations

import os

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input: one line, naming the thing and the problem."""


def fail(path: str | os.PathLike | None, problem: str, line: int | None = None) -> UserError:
    """Build a UserError of the form '<path>[:line]: <problem>', on one line (a newline or
    carriage return quoted from a file is shown escaped)."""
    problem = problem.replace("\r", "\\r").replace("\n", "\\n")
    where = ""
    if path is not None:
        where = f"{path}:{line}: " if line is not None else f"{path}: "
    return UserError(f"{where}{problem}")
