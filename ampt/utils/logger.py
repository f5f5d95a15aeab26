"""Logging to the console and to ``OUTPUT_DIR/log.txt``.

Dassl redirects ``sys.stdout`` into the log file; here the standard
``logging`` module does it, so library code logs through named loggers and
``print`` stays free for a command's own output. Messages are written bare
(no level prefix) so the evaluator's result block reads exactly as Dassl's,
which is what result parsers grep.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Optional, Union

ROOT_LOGGER = "ampt"
_FILE_HANDLER_ATTR = "_ampt_log_file"


class RunLogFileHandler(logging.FileHandler):
    """A log file that stops the command when it cannot be written (a full disk, a file-size limit).

    ``logging`` would print a "Logging error" block and go on, so a run could
    train for hours with a log that stopped growing; the log is part of the
    run's record, so the failure is raised as a one-line user error instead.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        err = sys.exc_info()[1]
        if isinstance(err, OSError):
            from ..errors import UserError
            from .io import user_write_error

            raise (user_write_error(err, self.baseFilename)
                   or UserError(f"cannot write the log file {self.baseFilename}: {err}")) from None
        super().handleError(record)


def _plain_formatter() -> logging.Formatter:
    return logging.Formatter("%(message)s")


def setup_logger(output: Optional[Union[str, Path]] = None, level: int = logging.INFO) -> Optional[Path]:
    """Send the ``ampt`` and plug-in loggers to the console and, if given, a file.

    ``output`` is a folder (the file is ``output/log.txt``) or a path ending in
    ``.txt``/``.log``. An existing log is appended to, after a dated separator,
    so a resumed run keeps one log. Calling again replaces the previous file
    handler. Returns the log file's path.
    """
    fpath: Optional[Path] = None
    for name in (ROOT_LOGGER, "ampt_plugins"):
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        if not any(getattr(h, "_ampt_console", False) for h in logger.handlers):
            console = logging.StreamHandler(sys.stdout)
            console.setFormatter(_plain_formatter())
            console._ampt_console = True  # type: ignore[attr-defined]
            logger.addHandler(console)
        for handler in [h for h in logger.handlers if getattr(h, _FILE_HANDLER_ATTR, False)]:
            logger.removeHandler(handler)
            handler.close()
    if output is None or str(output) == "":
        return None
    output = Path(output)
    fpath = output if output.suffix in (".txt", ".log") else output / "log.txt"
    fpath.parent.mkdir(parents=True, exist_ok=True)
    existed = fpath.exists() and fpath.stat().st_size > 0
    with open(fpath, "a", encoding="utf-8") as f:
        if existed:
            f.write(f"\n{'=' * 20} new session {time.strftime('%Y-%m-%d %H:%M:%S')} {'=' * 20}\n")
    for name in (ROOT_LOGGER, "ampt_plugins"):
        handler = RunLogFileHandler(fpath, mode="a", encoding="utf-8")
        handler.setFormatter(_plain_formatter())
        setattr(handler, _FILE_HANDLER_ATTR, True)
        logging.getLogger(name).addHandler(handler)
    return fpath


def close_log_files() -> None:
    """Detach and close the file handlers set by :func:`setup_logger` (tests, repeated runs)."""
    for name in (ROOT_LOGGER, "ampt_plugins"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if getattr(h, _FILE_HANDLER_ATTR, False)]:
            logger.removeHandler(handler)
            handler.close()


def reset_logger() -> None:
    """Undo :func:`setup_logger`: drop its handlers and let records propagate again (tests)."""
    for name in (ROOT_LOGGER, "ampt_plugins"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if getattr(handler, _FILE_HANDLER_ATTR, False) or getattr(handler, "_ampt_console", False):
                logger.removeHandler(handler)
                handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
