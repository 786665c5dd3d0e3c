"""The study summary: mean ± std over seeds (Markdown), validation R1 over training (PNG), wall time per run; with
``study.reference`` the held-out galleries and the paired differences by seed, and the part models' binding measures
(``study.paired``).

Reads each run's results.json (the selected checkpoint's rows: "val", "test", "test_hard"), its study_run.json (wall
time) and the ``eval/<select_on>/R1`` scalars the trainer writes to the work directory's event file.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Sequence

import numpy as np

from tpsearch_jax.evaluate import METRIC_KEYS, RESULTS_FILE
from tpsearch_jax.study import paired
from tpsearch_jax.study.runner import RUN_FILE, run_dir

SUMMARY_MD, SUMMARY_JSON, CURVES_PNG, BARS_PNG = "summary.md", "summary.json", "val_r1.png", "heldout_r1.png"


def eval_curve(workdir: str, split: str = "val", metric: str = "R1") -> list[tuple[int, float]]:
  """[(step, value)] of the ``eval/<split>/<metric>`` scalars in the work directory's event files, by step."""
  # tensorboard's reader loads TensorFlow's protos: imported only when curves are read
  from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
  from tensorboard.util import tensor_util

  tag, points = f"eval/{split}/{metric}", {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    for event in EventFileLoader(path).Load():
      for v in event.summary.value:
        if v.tag == tag:
          value = tensor_util.make_ndarray(v.tensor) if v.HasField("tensor") else v.simple_value
          points[int(event.step)] = float(value)
  return sorted(points.items())


def collect(study, out: str) -> dict:
  """{method: [per finished seed: {"seed", "rows": results.json splits, "wall_s", "curve", "steps_per_epoch"}]}."""
  found = {}
  for method in study.methods:
    runs = []
    for seed in study.seeds:
      wd = run_dir(out, method, seed)
      if not os.path.isfile(os.path.join(wd, RESULTS_FILE)):
        continue
      with open(os.path.join(wd, RESULTS_FILE)) as f:
        rows = json.load(f)["splits"]
      wall = None
      if os.path.isfile(os.path.join(wd, RUN_FILE)):
        with open(os.path.join(wd, RUN_FILE)) as f:
          wall = json.load(f).get("wall_s")
      runs.append({"seed": seed, "rows": rows, "wall_s": wall, "curve": eval_curve(wd)})
    found[method] = runs
  return found


def _table(found: dict, split: str, extra: bool) -> list[str]:
  head = ["method", "seeds"] + [f"{split} {k}" for k in METRIC_KEYS]
  if extra:
    head += ["val R1 (selected)", "wall s / run"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
  sizes, spread = None, functools.partial(paired.mean_spread, standard_error=False)
  for method, runs in found.items():
    have = [r for r in runs if split in r["rows"]]
    if not have:
      continue
    cells = [f"`{method}`", str(len(have))] + [spread(r["rows"][split][k] for r in have) for k in METRIC_KEYS]
    if extra:
      cells += [spread(r["rows"].get("val", {}).get("R1") for r in have), spread(r["wall_s"] for r in have)]
    sizes = (have[0]["rows"][split]["num_queries"], have[0]["rows"][split]["num_gallery"])
    lines.append("| " + " | ".join(cells) + " |")
  lines.append(f"\n({split}: {sizes[0]} queries, {sizes[1]} gallery images; mean ± sample std over seeds)"
               if sizes else "")
  return lines


def plot_curves(found: dict, path: str, steps_per_epoch: int | None = None,
                dashed: Sequence[str] = ()) -> str | None:
  """Validation R1 over training per method (mean over seeds, band = min..max; ``dashed``: methods drawn dashed, e.g.
  the ablations) → the PNG's path (None: no data)."""
  import matplotlib  # an optional heavy dependency: only the plot needs it

  matplotlib.use("Agg")  # before pyplot: no display
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  drawn = 0
  colours = plt.cm.tab20(np.linspace(0, 1, 20))
  for n, (method, runs) in enumerate(found.items()):
    curves = [dict(r["curve"]) for r in runs if r["curve"]]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
      continue
    vals = np.asarray([[c[s] for s in steps] for c in curves])
    x = np.asarray(steps) / (steps_per_epoch or 1)
    line, = ax.plot(x, vals.mean(0), marker="o", ms=3, color=colours[(2 * n) % 20 + (2 * n) // 20],
                    ls="--" if method in dashed else "-", label=f"{method} ({len(curves)})")
    ax.fill_between(x, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.12)
    drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  ax.set_xlabel("epoch" if steps_per_epoch else "step")
  ax.set_ylabel("val R1 (%)")
  ax.set_title("synthetic_pedes: validation R1 during training (mean over seeds; band: min–max)", fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def summarize(study, out: str) -> str:
  """Writes OUT/summary.md, summary.json and val_r1.png from the finished runs; returns the Markdown."""
  found = collect(study, out)
  paired.attach_heldout(study, out, found)
  lines = ["# Study summary", "", f"Runs under `{out}`; selection on val R1; seeds {list(study.seeds)}.", "",
           "## Test", ""] + _table(found, "test", True) + ["", "## Hard test queries (test_hard)", ""]
  lines += _table(found, "test_hard", False)
  if study.get("reference"):
    lines += ["", "## Paired by seed (mean ± standard error over seeds)", ""]
    lines += paired.paired_tables(found, study.reference)
  binding = paired.binding_table(found)
  if binding:
    lines += ["", "## Binding (test split, means over seeds)", ""] + binding
  lines += ["", "## Wall time per run (s)", "", "| method | " + " | ".join(f"seed {s}" for s in study.seeds) + " |",
            "|---|" + "---:|" * len(study.seeds)]
  for method, runs in found.items():
    by_seed = {r["seed"]: r["wall_s"] for r in runs}
    lines.append(f"| `{method}` | " + " | ".join("–" if by_seed.get(s) is None else f"{by_seed[s]:.0f}"
                                                 for s in study.seeds) + " |")
  text = "\n".join(lines) + "\n"
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, SUMMARY_MD), "w") as f:
    f.write(text)
  with open(os.path.join(out, SUMMARY_JSON), "w") as f:
    json.dump(found, f, indent=1)
  if study.get("reference"):
    paired.plot_columns(found, os.path.join(out, BARS_PNG))
  plot_curves(found, os.path.join(out, CURVES_PNG), int(study.get("steps_per_epoch", 0)) or None,
              dashed=[name for name, _, _ in study.get("variants", ())])
  return text
