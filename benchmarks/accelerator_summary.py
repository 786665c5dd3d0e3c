"""Merge the JSON records of ``accelerator_check.sh`` into one Markdown table (stdout) to append to RESULTS.md.

    python benchmarks/accelerator_summary.py OUT/main.json OUT/xla_attention.json ... > OUT/summary.md
"""

from __future__ import annotations

import json
import sys

TRAIN = ("step_time", "samples_per_sec", "mfu", "peak_memory", "compile_time")


def _fmt(value, digits: int = 1) -> str:
  return "n/a" if value is None else f"{value:,.{digits}f}"


def summary(payloads: list[dict]) -> str:
  """[benchmark JSON payloads] → Markdown: one train row per (method, attention, remat, MLM head), eval rows."""
  meta = payloads[0]["meta"]
  lines = [f"Device: {meta['device']} × {meta['num_devices']} ({meta['platform']}; host {meta['hardware']}); "
           f"jax {meta['versions']['jax']}, jaxlib {meta['versions']['jaxlib']}; preset `{meta['preset']}`; "
           f"{meta['date']}", "",
           "| method | attention | remat | MLM head | batch | dtype | ms/step | samples/s | MFU % | peak GiB | compile s |",
           "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
  evals = []
  for payload in payloads:
    rows: dict[tuple, dict] = {}
    for r in payload["records"]:
      parts = r["name"].split("/")
      if parts[0] == "train" and parts[-1] in TRAIN:
        c = r["config"]
        key = (c["method"], c["attention"], c["remat"], c.get("mlm_head", ""), c["batch_size"], c["dtype"])
        rows.setdefault(key, {})[parts[-1]] = r["value"]
      elif parts[0] == "eval" and parts[-1].endswith("_test_eval_time"):
        evals.append((parts[1], parts[-1].removesuffix("_test_eval_time"), r["value"], r["config"]))
      elif parts[0] == "eval" and parts[-1] == "peak_memory":
        evals.append((parts[1], "peak memory (GiB)", r["value"], r["config"]))
    for key, v in rows.items():
      method, attention, remat, head, batch, dtype = key
      lines.append(f"| {method} | {attention} | {remat} | {head} | {batch} | {dtype} | {_fmt(v.get('step_time'))} | "
                   f"{_fmt(v.get('samples_per_sec'), 0)} | {_fmt(v.get('mfu'))} | {_fmt(v.get('peak_memory'), 2)} | "
                   f"{_fmt(v.get('compile_time'))} |")
  if evals:
    lines += ["", "| method | evaluation | value | images | texts |", "|---|---|---:|---:|---:|"]
    lines += [f"| {m} | {what} | {_fmt(v, 2)} | {c.get('images', '')} | {c.get('texts', '')} |"
              for m, what, v, c in evals]
  return "\n".join(lines)


def main(paths: list[str]) -> int:
  payloads = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      payloads.append(json.load(f))
  print(summary(payloads))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
