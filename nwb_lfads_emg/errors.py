"""User-facing errors: one line naming the file, the object and what is wrong."""

from __future__ import annotations


class NwbLfadsEmgError(Exception):
    """Base of every error meant for the user; the CLI prints its message on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class SourceError(NwbLfadsEmgError):
    """A file or URL could not be opened or streamed."""


class EMGDataError(NwbLfadsEmgError):
    """The EMG (or behaviour) found in a file cannot be used as it is."""


class WriteBackError(NwbLfadsEmgError):
    """Results could not be written into an NWB file; the original is untouched."""


class TrainingError(NwbLfadsEmgError):
    """Training or inference could not proceed."""


def describe(location: object, obj: str | None, problem: str) -> str:
    """Format the standard one-line message: '<file>: <object>: <problem>'."""
    parts = [str(location)]
    if obj:
        parts.append(str(obj))
    parts.append(problem)
    return ": ".join(parts)


def one_line(exc: BaseException | str, limit: int = 200, last_line: bool = False) -> str:
    """An exception's message as one line: whitespace collapsed and cut at `limit` characters (the
    exception's type name when empty). `last_line` keeps only the last non-empty line (the raised
    error at the end of a traceback text, as Ray reports a trial's failure)."""
    text = str(exc)
    if last_line:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = " ".join(text.split())[:limit]
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text
