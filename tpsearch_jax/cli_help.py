"""What the command lines share: ``--help`` with the project's own flags (one line each), and quiet libraries.

``--help`` / ``-h`` prints the command's usage and the flags its module defines, one line each (absl's ``--helpfull``
still lists every flag of every library). Library INFO logging (orbax, etils, jax, absl's own) is dropped unless
``--verbose``: the project's INFO lines (progress, results) and every warning or error still show.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence

from absl import flags
from absl import logging as absl_logging

HELP_ARGS = ("--help", "-h", "-help", "--helpshort", "-?")
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# INFO lines kept without --verbose: this package's, and the metric lines it writes through CLU's logging writer.
OWN_INFO = (PACKAGE_DIR + os.sep, os.sep + os.path.join("clu", "metric_writers") + os.sep)


def wants_help(argv: Sequence[str]) -> bool:
  """Whether the command line asks for help (checked before any other flag, so nothing else is required)."""
  return any(a in HELP_ARGS for a in argv[1:])


def _help(flag: flags.Flag) -> str:
  """The flag's own help text on one line (absl's note on repeatable flags left out)."""
  return " ".join(flag.help.split(";\n")[0].split())


def _flag_line(flag: flags.Flag) -> str:
  default = "" if flag.default in (None, []) else f"={flag.default_as_str.strip(chr(39))}"
  if isinstance(flag, flags.BooleanFlag):
    default = f" (default {'true' if flag.default else 'false'})"
  elif isinstance(flag, flags.MultiFlag):
    default = " (repeatable)"
  return f"  --{flag.name}{default}  {_help(flag)}"


def own_flags(module: str) -> list[flags.Flag]:
  """The flags a module of this package defines (``module``: its dotted name; run as ``-m``, its file)."""
  path = module.replace(".", os.sep) + ".py"
  out = []
  for key, defined in flags.FLAGS.flags_by_module_dict().items():
    if key == module or key.endswith(path) or (key == "__main__" and sys.argv[0].endswith(path)):
      out += defined
  return out


def help_text(usage: str, module: str, *, extra: Sequence[str] = (), command: str | None = None,
              commands: Sequence[str] = ()) -> str:
  """usage + one line per flag of ``module`` (+ ``extra`` lines); with ``command``, only the flags whose help names
  it in a parenthesis, e.g. "(query)", or names none of ``commands`` there."""
  lines = [usage.replace("``", "").rstrip(), "", "flags:"]
  for flag in sorted(own_flags(module), key=lambda f: f.name):
    tags = " ".join(re.findall(r"\(([^()]*)\)", _help(flag)))
    named = [c for c in commands if re.search(rf"\b{c}\b", tags)]
    if command is None or not named or command in named:
      lines.append(_flag_line(flag))
  lines += list(extra)
  lines.append("  --helpfull  every flag, the libraries' included")
  return "\n".join(lines) + "\n"


def command_help(argv: Sequence[str], doc: str, module: str, commands: Sequence[str]) -> str:
  """Help of a command line with subcommands (``prog [command] --help``): the usage block of ``doc`` (up to its
  second blank line) and the flags of ``module`` that the command given in argv (or any) takes."""
  command = next((a for a in argv[1:] if a in commands), None)
  usage = "\n\n".join(doc.split("\n\n")[:2])
  if command:
    usage += f"\n\nflags of `{command}`; every command: {', '.join(commands)}"
  return help_text(usage, module, command=command, commands=commands)


def exit_with_help(text: str) -> None:
  """Prints ``text`` to stdout and exits with status 0."""
  sys.stdout.write(text)
  sys.stdout.flush()
  sys.exit(0)


class _ProjectInfoOnly(logging.Filter):
  """Passes warnings and errors, and the INFO records of ``OWN_INFO``'s files."""

  def filter(self, record: logging.LogRecord) -> bool:
    path = os.path.abspath(record.pathname)
    return record.levelno >= logging.WARNING or path.startswith(OWN_INFO[0]) or OWN_INFO[1] in path


_FILTER = _ProjectInfoOnly()


def quiet_libraries(verbose: bool) -> None:
  """Drops the libraries' INFO / DEBUG log lines unless ``verbose`` (idempotent)."""
  handler = absl_logging.get_absl_handler()
  handler.removeFilter(_FILTER)
  if not verbose:
    handler.addFilter(_FILTER)
