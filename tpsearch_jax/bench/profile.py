"""Profiling: trace a few train steps, then rank the trace's ops by total time, named by their JAX source."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re

import jax

from tpsearch_jax.bench.records import Results
from tpsearch_jax.bench.train import MethodSetup

_HLO_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")  # e.g. fusion.12, all-reduce.3, wrapped_broadcast.1
_HLO_METADATA = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"", re.MULTILINE)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
  """Compiled HLO text → {instruction name: JAX op_name metadata} (e.g. "fusion.3" → "jit(f)/.../dot_general")."""
  return dict(_HLO_METADATA.findall(hlo_text))


def top_ops(trace_dir: str, n: int = 15, op_names: dict[str, str] | None = None) -> list[dict]:
  """Top ``n`` ops by total duration in the newest ``*.trace.json.gz`` under ``trace_dir`` (device ops when the
  trace has device lanes, else the host's XLA execution threads). [{"name", "source", "total_ms", "count",
  "percent"}]; source = the op's JAX op_name from ``op_names`` (see ``hlo_op_names``), "" when unknown."""
  files = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
  if not files:
    return []
  with gzip.open(files[-1], "rt", encoding="utf-8") as f:
    trace = json.load(f)
  events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
  procs, threads = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      procs[e.get("pid")] = e.get("args", {}).get("name", "")
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      threads[(e.get("pid"), e.get("tid"))] = e.get("args", {}).get("name", "")
  device_pids = {p for p, name in procs.items() if "/device:" in name}
  op_lanes = {k for k, name in threads.items() if k[0] in device_pids and "XLA Ops" in name}

  def keep(e) -> bool:
    key = (e.get("pid"), e.get("tid"))
    if op_lanes:
      return key in op_lanes
    if device_pids:
      return e.get("pid") in device_pids
    # Host-only trace (CPU): XLA's execution threads, HLO instruction names only (not runtime/wait events).
    return threads.get(key, "").startswith(("tf_XLA", "XLA")) and _HLO_NAME.match(e.get("name", "")) is not None

  totals: dict[str, list[float]] = {}
  for e in events:
    if e.get("ph") == "X" and keep(e):
      t = totals.setdefault(e.get("name", "?"), [0.0, 0])
      t[0] += float(e.get("dur", 0.0))
      t[1] += 1
  whole = sum(t[0] for t in totals.values()) or 1.0
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:n]
  op_names = op_names or {}
  return [{"name": k, "source": op_names.get(k, ""), "total_ms": v[0] / 1e3, "count": int(v[1]),
           "percent": 100.0 * v[0] / whole} for k, v in ranked]


def ops_markdown(top: list[dict]) -> str:
  """Markdown table of ``top_ops`` rows."""
  if not top:
    return "(no op events found in the trace)"
  lines = ["| op | JAX source (op_name, tail) | total ms | count | % of op time |", "|---|---|---:|---:|---:|"]
  lines += [f"| `{o['name'][:60]}` | `{o.get('source', '')[-90:]}` | {o['total_ms']:.3f} | {o['count']} | "
            f"{o['percent']:.1f} |" for o in top]
  return "\n".join(lines)


def profile_train(s: MethodSetup, results: Results, args) -> None:
  """Traces ``--profile_steps`` compiled steps into ``--profile_dir``/method; records and prints the top ops."""
  name = s.config.model.name
  path = os.path.join(args.profile_dir, name)
  metrics = None
  with jax.profiler.trace(path):
    for _ in range(int(args.profile_steps)):
      s.state, metrics = s.compiled(s.state, s.batch)
    jax.block_until_ready((s.state, metrics))
  top = top_ops(path, int(args.profile_top), hlo_op_names(s.compiled.as_text()))
  results.extras.setdefault("profiles", {})[name] = {"trace_dir": path, "top_ops": top}
  table = ops_markdown(top)
  results.add_table(f"Top ops, {name} train step ({path})", table)
  print(f"\nTop ops of {name} ({int(args.profile_steps)} steps, trace in {path}):\n{table}\n")
