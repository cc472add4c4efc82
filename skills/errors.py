"""The exceptions of the skill library. Every one names the file (or skill) it is about."""

from __future__ import annotations

from pathlib import Path


class SkillLibraryError(ValueError):
    """A skill library that cannot be used as asked: a bad manifest, a bad argument, a conflict.

    ``path`` is the file the problem is in, where there is one.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class SkillFileError(SkillLibraryError):
    """A file of the library that is missing, truncated, corrupt, or fails its checksum."""


class SkillNotFoundError(SkillLibraryError, KeyError):
    """No skill (or base) of that name in the library."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0])
