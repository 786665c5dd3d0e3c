"""Benchmark records → JSON and Markdown; device metadata; the timing and memory helpers every section uses."""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Any, Callable

import flax
import jax
import jaxlib
import numpy as np


@dataclasses.dataclass
class Record:
  """One measurement. value None = not available on this device (``note`` says why)."""

  name: str
  value: float | int | None
  unit: str
  config: dict
  note: str = ""


class Results:
  """Collects records; writes JSON (``meta`` + ``records``) and renders the Markdown table."""

  def __init__(self, meta: dict):
    self.meta = meta
    self.records: list[Record] = []
    self.extras: dict[str, Any] = {}

  def add(self, name: str, value, unit: str, config: dict, note: str = "") -> None:
    """Appends a record (numpy scalars become Python numbers) and prints it as one line."""
    if isinstance(value, (np.floating, np.integer)):
      value = value.item()
    self.records.append(Record(name, value, unit, dict(config), note))
    print(f"  {name:<46} {_shown(value):>14} {unit:<10} {note}", flush=True)

  def add_table(self, title: str, table: str) -> None:
    """A Markdown table rendered after the records (extras["markdown_tables"][title])."""
    self.extras.setdefault("markdown_tables", {})[title] = table

  def to_json(self) -> dict:
    """{"meta", "records": [{name, value, unit, device, platform, num_devices, hardware, config, note}], extras}."""
    dev = {k: self.meta[k] for k in ("device", "platform", "num_devices", "hardware")}
    return {"meta": self.meta,
            "records": [dict(name=r.name, value=r.value, unit=r.unit, **dev, config=r.config, note=r.note)
                        for r in self.records],
            **self.extras}

  def markdown(self) -> str:
    """Device line, the records table (configs by reference c1, c2, …) and the extra tables."""
    m = self.meta
    lines = [f"Device: {m['device']} × {m['num_devices']} ({m['platform']}; host {m['hardware']}); "
             f"jax {m['versions']['jax']}, jaxlib {m['versions']['jaxlib']}, flax {m['versions']['flax']}; "
             f"preset `{m['preset']}`; {m['date']}", "",
             "| measurement | value | unit | config | note |", "|---|---:|---|---|---|"]
    legend: dict[str, str] = {}
    for r in self.records:
      cfg = ", ".join(f"{k}={v}" for k, v in r.config.items())
      ref = legend.setdefault(cfg, f"c{len(legend) + 1}")
      lines.append(f"| {r.name} | {_shown(r.value)} | {r.unit} | {ref} | {r.note} |")
    lines += ["", "Configs:"] + [f"- {ref}: {cfg}" for cfg, ref in legend.items()]
    for title, table in self.extras.get("markdown_tables", {}).items():
      lines += ["", f"**{title}**", "", table]
    return "\n".join(lines)


def fmt(v) -> str:
  """Thousands separators for ints, 4 significant digits (scientific outside [1e-3, 1e6)) for floats."""
  if isinstance(v, int):
    return f"{v:,}"
  if v == 0 or 1e-3 <= abs(v) < 1e6:
    return f"{v:.4g}"
  return f"{v:.4e}"


def _shown(v) -> str:
  return "n/a" if v is None else fmt(v)


def device_meta() -> dict:
  """{"device", "platform", "num_devices", "hardware" (CPU model), "versions", "date"} of this process."""
  dev = jax.devices()[0]
  hardware = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if names:
      hardware = f"{names[0]}, {os.cpu_count()} logical cores"
  except OSError:
    pass
  return {"device": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
          "hardware": hardware, "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                                             "flax": flax.__version__, "python": platform.python_version()},
          "date": datetime.date.today().isoformat()}


def median_time(fn: Callable[[], Any], windows: int) -> tuple[float, list[float]]:
  """Runs fn (which must block at its end) ``windows`` times → (median seconds, all)."""
  times = []
  for _ in range(windows):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def peak_memory() -> int | None:
  """Largest ``peak_bytes_in_use`` over the local devices, or None where the runtime does not report it (CPU)."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def add_peak_memory(results: Results, name: str, config: dict, note: str) -> None:
  """Records ``name`` = peak_memory() in GiB with ``note``, or n/a naming the platform that does not report it."""
  peak = peak_memory()
  results.add(name, None if peak is None else peak / 2 ** 30, "GiB", config,
              note if peak is not None else f"memory_stats() not reported on {jax.devices()[0].platform}")
