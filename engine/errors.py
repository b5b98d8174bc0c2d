"""Errors a user can fix: shown as one line, exit code 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input the user controls (paths, config, flags, prompts).

    The message is one line that names the file, key or value and says what to do.
    """


class ConfigError(UserError):
    """Bad config file or override."""


class ModelLoadError(UserError):
    """A model file that is missing, corrupt or of a kind the engine cannot run."""


class ServerError(UserError):
    """A remote server's fault (not running, overloaded, died mid-reply): exit code 1, not 2.

    Configuration mistakes a server reveals (a refused API key, an unknown model) stay UserError.
    """


class ContextOverflowError(UserError):
    """A prompt that does not fit the context window."""


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none), for
    the one-line errors a user sees instead of a traceback."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
