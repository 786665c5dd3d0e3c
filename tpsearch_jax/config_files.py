"""Loading the config files of ``configs/`` by path (the folder is not a package, and may be run from anywhere)."""

from __future__ import annotations

import importlib.util
import os
import types
from typing import Sequence

from tpsearch_jax.user_errors import UserError, first_line, nearest


def load_config_module(path: str) -> types.ModuleType:
  """The Python config file at ``path`` as a module (its ``get_config`` builds the ConfigDict)."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found")
  name = "tpsearch_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(value: str):
  """"file.py" or "file.py:argument" -> what that file's get_config() / get_config(argument) returns."""
  path, _, arg = value.partition(":")
  module = load_config_module(path)
  return module.get_config(arg) if arg else module.get_config()


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of the last ``name=V`` / ``name V`` in ``argv`` (absl keeps the last), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"{name}="):
      value = arg.split("=", 1)[1]
    elif arg == name and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def check_config_flags(argv: Sequence[str]) -> None:
  """Checks before absl parses ``argv``: ``--config`` is given (``--mode=eval`` may leave it out: the run's own config)
  and loads, and every ``--config.<path>`` override names an existing field; raises UserError naming the flag (with
  the nearest field) otherwise."""
  value = _flag_value(argv, "--config")
  if not value:
    if _flag_value(argv, "--mode") == "eval" and not any(a.startswith(("--config.", "--noconfig.")) for a in argv):
      return
    raise UserError("--config is required, e.g. --config=configs/cuhk.py:irra (a file in configs/ and a method)")
  try:
    config = load_config(value)
  except FileNotFoundError as e:
    raise UserError(f"--config={value}: {e}") from e
  except Exception as e:  # pylint: disable=broad-except  (a config file may raise anything for a bad argument)
    raise UserError(f"--config={value}: {first_line(e)}") from e
  for arg in argv:
    name = arg.split("=", 1)[0]
    for prefix in ("--config.", "--noconfig."):
      if name.startswith(prefix):
        _check_field(config, name[len(prefix):], name)


def _check_field(config, dotted: str, flag: str) -> None:
  node, walked = config, "config"
  for key in dotted.split("."):
    if not hasattr(node, "keys") or key not in node:
      fields = list(node.keys()) if hasattr(node, "keys") else []
      where = f"{walked} has no field {key!r}" if fields else f"{walked} is not a section"
      hint = nearest(key, fields) or (f" (its fields: {', '.join(sorted(fields))})" if fields else "")
      raise UserError(f"{flag}: {where}{hint}")
    node, walked = node[key], f"{walked}.{key}"
