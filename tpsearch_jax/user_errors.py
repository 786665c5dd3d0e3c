"""Errors a user can fix, and the one way the command-line tools report them: one line, no traceback.

Every command (``main``, ``search``, ``convert_weights``) runs its body through ``exit_on_user_error``: an exception
of a ``USER_FACING`` type prints ``<program>: error: <message>`` on stderr and returns status 2; ``--verbose`` (or
absl's ``--pdb``) lets it propagate with its traceback. Anything else is a bug and keeps its traceback. The
processes then leave through ``exit_process``.
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Callable, Iterable


class UserError(ValueError):
  """A mistake in the input (a file, a record, a flag) that the user can fix; the message says how."""


# Exit statuses of the commands (README, "Exit codes"): 0 done, 1 a bug (traceback), USER_ERROR_STATUS an input mistake
# (one line), DIVERGED_STATUS a non-finite loss (one line; the last checkpoint is finite), STALLED_STATUS nothing
# finished within train.stall_timeout_s (training/watchdog.py; stacks in WORKDIR/stall_<process>.txt),
# PREEMPTED_STATUS stopped by SIGTERM after saving. Rerunning the same command resumes after 3 (with a lower lr), 4
# and 143.
USER_ERROR_STATUS = 2
DIVERGED_STATUS = 3
STALLED_STATUS = 4
PREEMPTED_STATUS = 143
USER_FACING = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def nearest(name: str, choices: Iterable[str]) -> str:
  """' (did you mean "x"?)' for the closest of ``choices`` to ``name``, or '' when none is close."""
  match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
  return f' (did you mean "{match[0]}"?)' if match else ""


def first_line(e: BaseException, limit: int = 200) -> str:
  """"TypeName: first line of the message" of ``e``, cut at ``limit`` characters (for one-line reports)."""
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:limit]}"


def exit_on_user_error(body: Callable[[], int], *, program: str, verbose: bool = False) -> int:
  """Runs ``body``; a ``USER_FACING`` exception → one line on stderr and exit status 2 (re-raised when verbose)."""
  try:
    return body()
  except USER_FACING as e:
    if verbose:
      raise
    message = str(e).strip() or type(e).__name__
    print(f"{program}: error: {message} (--verbose shows the traceback)", file=sys.stderr)
    sys.stderr.flush()
    return USER_ERROR_STATUS


def exit_process(status: int) -> None:
  """Ends a command-line process with ``status``; after a user error at once (``os._exit``), because the background
  threads of a failed checkpoint read would otherwise print tracebacks at interpreter shutdown, after the one line."""
  if status != USER_ERROR_STATUS:
    sys.exit(status)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)
