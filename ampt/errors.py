"""Errors caused by the user's input: ``train.py`` and ``evaluate.py`` print them as one line.

Raise :class:`UserError` where input is validated (a config value, a flag, a
file or folder the user named, a dataset on disk) with a message that says
what was wrong, where (the key or path), the valid choices and the fix. The
command-line entry points print ``error: <message>`` and exit with status 2;
any other exception is a bug and keeps its traceback (``--debug`` shows the
traceback of user errors too). ``UserError`` subclasses ``ValueError`` (and
:class:`UserFileNotFoundError` also ``FileNotFoundError``), so code that
catches those built-in types keeps working.
"""
from __future__ import annotations


class UserError(ValueError):
    """Invalid input the user can fix; shown as one line by the command-line tools."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named (or that their config implies) does not exist."""


class MissingDependencyError(UserError, ImportError):
    """A package the chosen setting needs is not installed; the message says how to install it."""


class NonFiniteError(UserError):
    """Weights or logits that hold NaN or Inf: any accuracy computed from them would be meaningless."""


__all__ = ["MissingDependencyError", "NonFiniteError", "UserError", "UserFileNotFoundError"]
