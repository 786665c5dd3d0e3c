"""--help of the command lines (the project's flags, one line each, no config needed) and the quiet library logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from absl import logging as absl_logging

from tpsearch_jax import cli_help

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=300)


def _flag_lines(out: str) -> list[str]:
  return [line for line in out.splitlines() if line.startswith("  --")]


def test_main_help_needs_no_config_and_lists_its_flags():
  out = _run("tpsearch_jax.main", "--help")
  assert out.returncode == 0, out.stderr
  names = [line.split()[0].split("=")[0] for line in _flag_lines(out.stdout)]
  assert {"--config", "--workdir", "--mode", "--verbose", "--config.SECTION.FIELD", "--helpfull"} <= set(names)
  assert len(names) == len(set(names))  # one line each
  assert "--xla_" not in out.stdout and "--jax_" not in out.stdout  # the libraries' flags stay behind --helpfull


@pytest.mark.parametrize("command,has,lacks", [
    ("query", "--k", "--port"), ("serve", "--port", "--images"), ("index", "--images", "--k")])
def test_search_command_help_lists_that_commands_flags(command, has, lacks):
  out = _run("tpsearch_jax.search", command, "--help")
  assert out.returncode == 0, out.stderr
  names = {line.split()[0].split("=")[0] for line in _flag_lines(out.stdout)}
  assert has in names and lacks not in names and "--index" in names
  assert len(_flag_lines(out.stdout)) == len(names)  # one line each


def _record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_library_info_is_dropped_unless_verbose():
  handler = absl_logging.get_absl_handler()
  library = os.path.join(os.path.dirname(logging.__file__), "orbax", "checkpoint", "manager.py")
  ours = os.path.join(cli_help.PACKAGE_DIR, "training", "trainer.py")
  metrics = os.path.join(os.path.dirname(library), os.pardir, os.pardir, "clu", "metric_writers", "logging_writer.py")
  try:
    cli_help.quiet_libraries(verbose=False)
    assert not handler.filter(_record(library, logging.INFO))
    assert handler.filter(_record(library, logging.WARNING)) and handler.filter(_record(ours, logging.INFO))
    assert handler.filter(_record(metrics, logging.INFO))  # the training metric lines, written through CLU
    cli_help.quiet_libraries(verbose=True)
    assert handler.filter(_record(library, logging.INFO))
  finally:
    cli_help.quiet_libraries(verbose=True)
