"""Loading the config files of ``configs/`` by path (the folder is not a package, and may be run from anywhere)."""

from __future__ import annotations

import importlib.util
import os
import types


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
