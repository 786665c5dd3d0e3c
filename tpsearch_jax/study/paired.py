"""Paired comparisons over seeds, held-out galleries and binding measures of a study's runs.

Runs of two methods with the same seed (``config.seed``) share the training seed, so their difference on one seed
removes what the seed does to both; the standard error of the mean difference is the sample std of the per-seed
differences / √n. A difference counts as clear when |mean| > 2 standard errors.

The held-out score of a run (``heldout_galleries.json`` in its work directory, ``study.galleries``) is its mean
over the pool's galleries: one number per run, so its seed-to-seed spread is the training noise on a fixed set of
galleries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from tpsearch_jax.study import galleries
from tpsearch_jax.study.runner import run_dir

HELDOUT_FILE = "heldout_galleries.json"

# The columns compared: (label, value of one run's record or None).
COLUMNS: tuple[tuple[str, Callable[[Mapping], float | None]], ...] = (
    ("test R1", lambda r: r["rows"].get("test", {}).get("R1")),
    ("test_hard R1", lambda r: r["rows"].get("test_hard", {}).get("R1")),
    ("held-out R1", lambda r: (r.get("heldout") or {}).get("model", {}).get("R1", {}).get("mean")),
    ("held-out hard R1", lambda r: (r.get("heldout") or {}).get("hard", {}).get("R1", {}).get("mean")),
)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float] | None:
  """{seed: value} of method a and of method b → {"n", "mean", "se"} of a − b over the seeds both have (se: sample
  std of the differences / √n; nan for one seed); None when they share no seed."""
  seeds = sorted(set(a) & set(b))
  if not seeds:
    return None
  d = np.asarray([a[s] - b[s] for s in seeds], np.float64)
  se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
  return {"n": len(d), "mean": float(d.mean()), "se": se}


def by_seed(runs: Sequence[Mapping], value: Callable[[Mapping], float | None]) -> dict[int, float]:
  """A method's run records → {seed: value} of the runs that have it."""
  return {r["seed"]: float(v) for r in runs if (v := value(r)) is not None}


def best_reference(found: Mapping[str, Sequence[Mapping]], reference: Sequence[str],
                   value: Callable[[Mapping], float | None]) -> str | None:
  """The method of ``reference`` with the highest mean of ``value`` over its seeds, among those with the most seeds (a
  reference still missing seeds would pair with fewer of them); None: none has a value."""
  values = {m: v for m in reference if (v := by_seed(found.get(m, ()), value))}
  most = max((len(v) for v in values.values()), default=0)
  means = {m: np.mean(list(v.values())) for m, v in values.items() if len(v) == most}
  return max(means, key=means.get) if means else None


def attach_heldout(study, out: str, found: Mapping[str, list[dict]]) -> None:
  """Adds each run's held-out galleries result (``r["heldout"]``) to ``found``, first scoring the runs that lack one
  when the study names a pool (``study.heldout_pool``)."""
  pool = study.get("heldout_pool", "")
  for method, runs in found.items():
    for r in runs:
      wd = run_dir(out, method, r["seed"])
      path = os.path.join(wd, HELDOUT_FILE)
      if not os.path.isfile(path) and pool:
        result = galleries.evaluate_run(wd, galleries.ensure_pool(pool))
        with open(path, "w", encoding="utf-8") as f:
          json.dump(result, f, indent=1)
      if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
          r["heldout"] = json.load(f)


def _cell(stat: Mapping[str, float] | None) -> str:
  if stat is None:
    return "–"
  if stat["n"] < 2:
    return f"{stat['mean']:+.2f} (1 seed)"
  mark = " **" if abs(stat["mean"]) > 2 * stat["se"] else ""
  return f"{stat['mean']:+.2f} ± {stat['se']:.2f}{mark}"


def mean_spread(values, standard_error: bool) -> str:
  """Values (None skipped) → "mean ± sample std", or "mean ± standard error" (std / √n); one value alone; "–"
  for none."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return "–"
  if len(v) == 1:
    return f"{v[0]:.2f}"
  spread = v.std(ddof=1) / (np.sqrt(len(v)) if standard_error else 1.0)
  return f"{v.mean():.2f} ± {spread:.2f}"


def paired_tables(found: Mapping[str, Sequence[Mapping]], reference: Sequence[str]) -> list[str]:
  """Markdown: each method's mean ± s.e. over seeds per column, and its paired difference to the best method of
  ``reference`` in that column (** where |difference| > 2 s.e.)."""
  lines = ["| method | seeds | " + " | ".join(label for label, _ in COLUMNS) + " |",
           "|---|---:|" + "---:|" * len(COLUMNS)]
  for method, runs in found.items():
    if runs:
      lines.append(f"| `{method}` | {len(runs)} | " + " | ".join(
          mean_spread(by_seed(runs, value).values(), standard_error=True) for _, value in COLUMNS) + " |")
  best = [best_reference(found, reference, value) for _, value in COLUMNS]
  lines += ["", "Paired difference to the best of " + ", ".join(f"`{m}`" for m in reference) + " in each column, "
            "among those with the most seeds ("
            + ", ".join(f"{label}: `{b}`" for (label, _), b in zip(COLUMNS, best) if b) + "), mean ± s.e. over the "
            "seeds both have; ** where |difference| > 2 s.e.", "",
            "| method | " + " | ".join(label for label, _ in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
  for method, runs in found.items():
    if not runs or method in best:
      continue
    cells = [_cell(paired_difference(by_seed(runs, value), by_seed(found[b], value)) if b else None)
             for (_, value), b in zip(COLUMNS, best)]
    lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
  return lines


def _nanmean(values) -> float:
  """Mean of the finite values; NaN when there is none."""
  v = np.asarray(values, np.float64)
  return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def binding_table(found: Mapping[str, Sequence[Mapping]]) -> list[str]:
  """Markdown: the binding measures of the test row (``binding``, part models only), means over the seeds that have
  each (a run older than a measure holds NaN for it)."""
  lines = ["| method | seeds | foreground AUC (chance 0.5) | twin-gap share (chance) | part attention mass (chance) "
           "| coarse cosine image / text |", "|---|---:|---:|---:|---:|---:|"]
  for method, runs in found.items():
    b = [r["rows"]["test"]["binding"] for r in runs if r["rows"].get("test", {}).get("binding")]
    if not b:
      continue
    mean = lambda f: _nanmean([f(x) for x in b])  # noqa: E731
    lines.append(
        f"| `{method}` | {len(b)} | {mean(lambda x: x['foreground_auc']):.3f} | "
        f"{mean(lambda x: x['twin_gap']['share']):.3f} ({mean(lambda x: x['twin_gap']['chance']):.3f}) | "
        f"{mean(lambda x: np.mean(x['part_attention']['mass'])):.3f} "
        f"({mean(lambda x: np.mean(x['part_attention']['chance'])):.3f}) | "
        f"{mean(lambda x: x['coarse_cosine']['image']):.3f} / {mean(lambda x: x['coarse_cosine']['text']):.3f} |")
  return lines if len(lines) > 2 else []


def plot_columns(found: Mapping[str, Sequence[Mapping]], path: str,
                 labels: Sequence[str] = ("held-out R1", "held-out hard R1")) -> str | None:
  """Horizontal bars: per method the mean ± s.e. over seeds of the ``labels`` columns → the PNG's path (None: no
  data)."""
  import matplotlib  # the plotting backend, only where a figure is drawn

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  columns = [(label, value) for label, value in COLUMNS if label in labels]
  methods = [m for m, runs in found.items() if any(by_seed(runs, v) for _, v in columns)]
  if not methods:
    return None
  fig, axes = plt.subplots(1, len(columns), figsize=(5 * len(columns), 0.35 * len(methods) + 1.2), sharey=True)
  for ax, (label, value) in zip(np.atleast_1d(axes), columns):
    stats = [list(by_seed(found[m], value).values()) for m in methods]
    means = [np.mean(v) if v else np.nan for v in stats]
    errs = [np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in stats]
    y = np.arange(len(methods))
    ax.barh(y, means, xerr=errs, color="tab:blue", alpha=0.7, capsize=2)
    ax.set_yticks(y, [f"{m} ({len(v)})" for m, v in zip(methods, stats)], fontsize=8)
    finite = [m for m in means if np.isfinite(m)]
    ax.set_xlim(min(finite) - 10, max(finite) + 5)
    ax.set_xlabel(f"{label} (%), mean ± s.e. over seeds")
    ax.grid(axis="x", alpha=0.3)
  np.atleast_1d(axes)[0].invert_yaxis()  # the first method on top (the axes share y: invert once)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
