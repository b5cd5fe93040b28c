"""How the ``attnzoo`` sub-commands end: one line on stderr and an exit status, never a bare traceback.

* 0: done.
* 2: a usage or input error (an argument, a file or a checkpoint that cannot be used): one line
  ``attnzoo <command>: error: ...`` naming the argument or file and what was expected.
* 1: the command could not finish: a failure the message explains (a full disk: ``no space left on
  device writing <file>; nothing was replaced``), or an internal error, reported in one line
  (``internal error: <type>: <message>``) with its traceback printed only with ``--debug`` or
  ``ATTNZOO_DEBUG=1``.

Under torchrun only rank 0 prints.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Tuple, Type

__all__ = ["report", "debug_requested", "DEBUG_ENV"]

DEBUG_ENV = "ATTNZOO_DEBUG"


def debug_requested(flag: bool = False) -> bool:
    return bool(flag) or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _print(line: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr, flush=True)


def report(prog: str, body: Callable[[], int], *, input_errors: Tuple[Type[BaseException], ...] = (),
           explained: Tuple[Type[BaseException], ...] = (), debug: bool = False) -> int:
    """``body()``'s exit status; ``input_errors`` end with status 2, ``explained`` failures and
    any other exception with status 1, each in one line on stderr."""
    try:
        return body()
    except input_errors as exc:
        _print(f"{prog}: error: {exc}")
        return 2
    except explained as exc:
        _print(f"{prog}: error: {exc}")
        return 1
    except Exception as exc:  # an internal error: one line, the traceback on request
        if debug_requested(debug):
            if int(os.environ.get("RANK", "0")) == 0:
                traceback.print_exc()
            hint = ""
        else:
            hint = f" (run again with --debug or {DEBUG_ENV}=1 for the traceback)"
        text = str(exc).strip().splitlines()
        _print(f"{prog}: internal error: {type(exc).__name__}: {text[0] if text else ''}{hint}")
        return 1
