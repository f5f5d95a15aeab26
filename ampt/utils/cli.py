"""One-line errors for the command-line entry points (``train.py``, ``evaluate.py``)."""
from __future__ import annotations

import sys
from typing import Callable, Tuple, Type


def run_cli(main: Callable[[], int], user_errors: Tuple[Type[BaseException], ...]) -> int:
    """Run ``main``; an error the user can fix prints ``error: ...`` and returns 2, no traceback.

    Besides ``user_errors``, that covers a registry's "Unknown <kind> ..."
    ``KeyError`` and the ``ImportError`` that says how to install Dassl.
    Anything else propagates with its traceback.
    """
    from ..engine.dassl_api import INSTALL_HINT

    try:
        return main()
    except user_errors as err:
        message = str(err)
    except ImportError as err:
        if INSTALL_HINT not in str(err):
            raise
        message = str(err)
    except KeyError as err:
        message = str(err.args[0]) if err.args else ""
        if not message.startswith("Unknown "):
            raise
    print(f"error: {message}", file=sys.stderr)
    return 2
