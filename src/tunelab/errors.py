"""Errors that reach the user as one line (CLI exit code 2), never as a traceback."""


class TunelabError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(TunelabError):
    """A bad key or value in a config file or a command-line override."""


class DataError(TunelabError):
    """A dataset that cannot be used as asked (missing column, one class, empty, ...)."""


class RunFailed(TunelabError):
    """One run failed for a reason of its own (recorded in its result.json); a comparison
    records it and goes on with the other runs."""


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite; the run is recorded as failed."""


class NoTokenizer(TunelabError):
    """The model has no usable tokenizer (a folder holding only config.json, as published
    configs are shared); ``tunelab plan`` then counts data.max_length tokens per example."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The error's type and first line: what a one-line message can say of it."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:limit] if lines else ''}".rstrip(": ")
