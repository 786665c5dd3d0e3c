"""Throughput benchmark: ``python -m tpsearch_jax.benchmark [--preset=ci|small|full] [--methods=irra,...] [--out=F]``.

No dataset and no TensorFlow: in-memory synthetic batches of the batch contract's shapes run through the trainer's
own ``create_train_state`` / ``make_train_step``, the evaluator (``evaluate.Evaluator``), ``tpsearch_jax.metrics``
and ``tpsearch_jax.search_index``. Per method: compile time, steady-state steps/s and samples/s, peak device memory,
analytic and XLA FLOPs per step, MFU (analytic model FLOPs / step time / device peak); eval encoding throughput and,
at the chosen dataset sizes, the end-to-end test evaluation. Then retrieval-metric time at the CUHK-PEDES and
ICFG-PEDES test sizes and brute-force search queries/s on a large index. Steady state = median over timing windows of
``--steps`` steps each, with one ``block_until_ready`` at the end of each window, after ``--warmup`` steps.

Presets: ``ci`` (tiny model, tiny sizes; a smoke test), ``small`` (384×128 inputs, 4-layer width-256 towers, real
metric/search sizes; for CPUs), ``full`` (CLIP ViT-B/16, batch 128, real sizes). Default: ``full`` on GPU/TPU,
``small`` on CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import json
import logging
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tpsearch_jax.config_files import load_config_module

_LOG = logging.getLogger("tpsearch_jax.benchmark")
_DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
SECTIONS = ("train", "eval", "metrics", "search")
_HLO_NAME = re.compile(r"^[a-z][a-z0-9_.\-]*$")  # e.g. fusion.12, all-reduce.3, wrapped_broadcast.1
_HLO_METADATA = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"", re.MULTILINE)

# (gallery images, query captions, identities) of the test splits.
DATASET_SIZES = {
    "ci": (40, 72, 10),
    "cuhk": (3074, 6156, 1000),
    "icfg": (19848, 19848, 1000),
}

_SMALL_CLIP = dict(embed_dim=256, image_size=(384, 128), patch_size=16, vision_width=256, vision_layers=4,
                   vision_heads=4, context_length=77, vocab_size=49408, text_width=256, text_layers=4, text_heads=4)


@dataclasses.dataclass(frozen=True)
class Preset:
  """Model size and workload sizes of one benchmark preset."""

  description: str
  clip: dict | None  # CLIPConfig fields; None = the config's default (ViT-B/16); "tiny" presets use tiny_model_config
  tiny: bool
  num_classes: int
  batch_size: int
  warmup: int
  steps: int  # per timing window
  windows: int
  eval_batch_size: int
  eval_batches: int  # batches per throughput measurement
  eval_sizes: tuple[str, ...]  # end-to-end evaluations (keys of DATASET_SIZES)
  metrics_sizes: tuple[str, ...]
  search_rows: int
  search_dim: int
  search_query_batch: int
  search_batches: int


PRESETS = {
    "ci": Preset("tiny model (48×16 images, width 32, 2 layers) and tiny workloads: a smoke test, not a measurement",
                 clip=None, tiny=True, num_classes=16, batch_size=8, warmup=1, steps=1, windows=1,
                 eval_batch_size=16, eval_batches=1, eval_sizes=("ci",), metrics_sizes=("ci",), search_rows=4096,
                 search_dim=64, search_query_batch=16, search_batches=1),
    "small": Preset("small towers (384×128 inputs, patch 16, width 256, 4 layers, embed 256) for CPUs; real metric "
                    "and search sizes", clip=_SMALL_CLIP, tiny=False, num_classes=11003, batch_size=16, warmup=1,
                    steps=2, windows=3, eval_batch_size=64, eval_batches=2, eval_sizes=(),
                    metrics_sizes=("cuhk", "icfg"), search_rows=1_000_000, search_dim=512, search_query_batch=256,
                    search_batches=3),
    "full": Preset("CLIP ViT-B/16 @ 384×128, text 77 tokens, 11,003 classes (CUHK-PEDES train ids)", clip=None,
                   tiny=False, num_classes=11003, batch_size=128, warmup=3, steps=10, windows=5, eval_batch_size=512,
                   eval_batches=6, eval_sizes=("cuhk", "icfg"), metrics_sizes=("cuhk", "icfg"),
                   search_rows=1_000_000, search_dim=512, search_query_batch=1024, search_batches=10),
}


# ----------------------------------------------------------------------------------------------------- records


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
    if isinstance(value, (np.floating, np.integer)):
      value = value.item()
    self.records.append(Record(name, value, unit, dict(config), note))
    shown = "n/a" if value is None else _fmt(value)
    print(f"  {name:<46} {shown:>14} {unit:<10} {note}", flush=True)

  def to_json(self) -> dict:
    dev = {k: self.meta[k] for k in ("device", "platform", "num_devices", "hardware")}
    return {"meta": self.meta,
            "records": [dict(name=r.name, value=r.value, unit=r.unit, **dev, config=r.config, note=r.note)
                        for r in self.records],
            **self.extras}

  def markdown(self) -> str:
    m = self.meta
    lines = [f"Device: {m['device']} × {m['num_devices']} ({m['platform']}; host {m['hardware']}); "
             f"jax {m['versions']['jax']}, jaxlib {m['versions']['jaxlib']}, flax {m['versions']['flax']}; "
             f"preset `{m['preset']}`; {m['date']}", "",
             "| measurement | value | unit | config | note |", "|---|---:|---|---|---|"]
    legend: dict[str, str] = {}
    for r in self.records:
      shown = "n/a" if r.value is None else _fmt(r.value)
      cfg = ", ".join(f"{k}={v}" for k, v in r.config.items())
      ref = legend.setdefault(cfg, f"c{len(legend) + 1}")
      lines.append(f"| {r.name} | {shown} | {r.unit} | {ref} | {r.note} |")
    lines += ["", "Configs:"] + [f"- {ref}: {cfg}" for cfg, ref in legend.items()]
    for title, table in self.extras.get("markdown_tables", {}).items():
      lines += ["", f"**{title}**", "", table]
    return "\n".join(lines)


def _fmt(v) -> str:
  if isinstance(v, int):
    return f"{v:,}"
  if v == 0 or 1e-3 <= abs(v) < 1e6:
    return f"{v:.4g}"
  return f"{v:.4e}"


# ----------------------------------------------------------------------------------------------------- helpers


def _device_meta() -> dict:
  dev = jax.devices()[0]
  hardware = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if names:
      hardware = f"{names[0]}, {os.cpu_count()} logical cores"
  except OSError:
    pass
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {"device": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
          "hardware": hardware, "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                                             "flax": flax.__version__, "python": platform.python_version()},
          "date": datetime.date.today().isoformat()}


def load_default_config(method: str, path: str | os.PathLike = _DEFAULT_CONFIG):
  """configs/default.py:get_config(method), loaded by file path (configs/ is not part of the installed package)."""
  return load_config_module(str(path)).get_config(method)


def _median_time(fn: Callable[[], Any], windows: int) -> tuple[float, list[float]]:
  """Runs fn (which must block at its end) ``windows`` times → (median seconds, all)."""
  times = []
  for _ in range(windows):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def _peak_memory() -> int | None:
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


def _compiled_memory(compiled) -> int | None:
  """Bytes per device the compiled program needs (arguments + outputs + temporaries − donated aliases)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _xla_flops(compiled) -> float | None:
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def synthetic_train_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A train batch of the contract's shapes: normal images, captions of random length, 15 % MLM masking, random pids."""
  from tpsearch_jax.data import tokenizer  # pylint: disable=g-import-not-at-top  (pure Python, no TF)

  h, w = config.data.image_size
  length = int(config.data.context_length)
  ids = np.zeros((batch_size, length), np.int32)
  lengths = rng.integers(8, length - 1, size=batch_size)
  for i, n in enumerate(lengths):
    ids[i, 0] = tokenizer.SOT_ID
    ids[i, 1:n] = rng.integers(1, tokenizer.MASK_ID, size=n - 1)
    ids[i, n] = tokenizer.EOT_ID
  eligible = (ids > 0) & (ids < tokenizer.MASK_ID)
  chosen = eligible & (rng.random(ids.shape) < 0.15)
  labels = np.where(chosen, ids, 0).astype(np.int32)
  mlm = np.where(chosen, tokenizer.MASK_ID, ids).astype(np.int32)
  return {"images": rng.standard_normal((batch_size, h, w, 3), dtype=np.float32), "caption_ids": ids,
          "mlm_ids": mlm, "mlm_labels": labels,
          "pids": rng.integers(0, int(config.model.num_classes), size=batch_size).astype(np.int32),
          "image_ids": np.arange(batch_size, dtype=np.int32)}


# ----------------------------------------------------------------------------------------------------- config


def method_config(method: str, preset: Preset, args, attention: str = "xla") -> Any:
  """The base config of ``method`` with the preset's model size and the CLI's batch/precision/remat/FSDP choices."""
  from tpsearch_jax import train  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.models import presets  # pylint: disable=g-import-not-at-top

  config = load_default_config(method, args.config_file)
  with config.unlocked():
    if preset.tiny:
      tiny = presets.tiny_model_config(method, num_classes=preset.num_classes)
      config.model.update(tiny["model"])
    elif preset.clip is not None:
      config.model.clip.update(preset.clip)
    image_size = tuple(config.model.clip.image_size)
    config.model.clip.image_size = image_size
    config.data.image_size = image_size
    config.model.num_classes = preset.num_classes
    config.model.dtype = args.dtype
    config.model.remat = bool(args.remat)
    config.model.attention_impl = None if attention == "xla" else attention
    config.train.batch_size = int(args.batch_size or preset.batch_size)
    config.train.fsdp = bool(args.fsdp)
    config.eval.batch_size = int(args.eval_batch_size or preset.eval_batch_size)
  return train.resolve_config(config)


def _config_summary(config, **extra) -> dict:
  c = config.model.clip
  return {"method": config.model.name, "batch_size": int(config.train.batch_size), "dtype": config.model.dtype,
          "remat": bool(config.model.remat), "fsdp": bool(config.train.fsdp),
          "attention": config.model.attention_impl or "xla",
          "model": f"ViT w{c.vision_width}×{c.vision_layers} p{c.patch_size} @ {c.image_size[0]}×{c.image_size[1]}, "
                   f"text w{c.text_width}×{c.text_layers}, E{c.embed_dim}", **extra}


# ----------------------------------------------------------------------------------------------------- train


@dataclasses.dataclass
class MethodSetup:
  config: Any
  model: Any
  mesh: Any
  state: Any
  shardings: Any
  step: Callable
  batch: dict
  compiled: Any = None  # the step, lowered and compiled for (state, batch)
  compile_time: float | None = None


def setup_method(config, seed: int = 0) -> MethodSetup:
  """Model, sharded TrainState and the trainer's jitted step on a synthetic global batch (no compilation yet)."""
  from tpsearch_jax import sharding as shd  # pylint: disable=g-import-not-at-top
  from tpsearch_jax import train  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.models import build_model  # pylint: disable=g-import-not-at-top

  mesh = shd.create_mesh()
  train.check_parallelism(config, mesh)
  model = build_model(config)
  batch_np = synthetic_train_batch(config, int(config.train.batch_size), np.random.default_rng(seed))
  state, tx, shardings = train.create_train_state(config, model, mesh, jax.random.PRNGKey(seed), batch_np)
  step = train.make_train_step(config, model, tx, mesh, shardings)
  return MethodSetup(config, model, mesh, state, shardings, step, shd.to_global(batch_np, mesh))


def compile_step(s: MethodSetup) -> None:
  """Lowers and compiles the train step for the setup's state and batch; records the wall time."""
  t0 = time.perf_counter()
  s.compiled = s.step.jitted.lower(s.state, s.batch).compile()
  s.compile_time = time.perf_counter() - t0


def bench_train(s: MethodSetup, results: Results, preset: Preset, args) -> None:
  """Compile time, steady-state step time, memory, FLOPs and MFU of the trainer's step on one device mesh."""
  from tpsearch_jax import flops  # pylint: disable=g-import-not-at-top

  config = s.config
  cfg = _config_summary(config)
  name = f"train/{config.model.name}"
  b = int(config.train.batch_size)
  if s.compiled is None:
    compile_step(s)
  compiled = s.compiled
  results.add(f"{name}/compile_time", s.compile_time, "s", cfg, "lower + compile of the train step")

  state = s.state
  metrics = None
  for _ in range(int(args.warmup if args.warmup is not None else preset.warmup)):
    state, metrics = compiled(state, s.batch)
  jax.block_until_ready((state, metrics))
  steps = int(args.steps or preset.steps)

  def window():
    nonlocal state, metrics
    for _ in range(steps):
      state, metrics = compiled(state, s.batch)
    jax.block_until_ready((state, metrics))

  step_time, all_times = _median_time(window, int(args.windows or preset.windows))
  step_time /= steps
  if metrics is not None and not bool(jax.device_get(metrics["finite"])):
    _LOG.warning("%s: the loss is not finite after the timed steps (%s)", name, jax.device_get(metrics["loss"]))
  n_dev = s.mesh.size
  spread = f"windows of {steps} step(s): " + ", ".join(f"{t / steps * 1e3:.1f}" for t in all_times) + " ms/step"
  results.add(f"{name}/step_time", step_time * 1e3, "ms", cfg, f"median; {spread}")
  results.add(f"{name}/steps_per_sec", 1.0 / step_time, "steps/s", cfg)
  results.add(f"{name}/samples_per_sec", b / step_time, "samples/s", cfg, f"global batch {b} on {n_dev} device(s)")

  peak = _peak_memory()
  results.add(f"{name}/peak_memory", None if peak is None else peak / 2 ** 30, "GiB", cfg,
              "process-wide peak_bytes_in_use so far (max over devices)" if peak is not None
              else f"memory_stats() not reported on {jax.devices()[0].platform}")
  need = _compiled_memory(compiled)
  results.add(f"{name}/compiled_memory", None if need is None else need / 2 ** 30, "GiB", cfg,
              "XLA memory analysis of the step: arguments + outputs + temporaries − donated, per device")

  counted = flops.train_step_flops(config, b)
  results.add(f"{name}/flops_per_step", counted.train_total, "FLOP", cfg,
              "analytic model FLOPs (matmuls, fwd + bwd, no remat recompute)")
  results.add(f"{name}/flops_per_sample", counted.per_sample, "FLOP", cfg, "analytic")
  xla = _xla_flops(compiled)
  results.add(f"{name}/xla_flops_per_device_step", xla, "FLOP", cfg,
              f"XLA cost analysis of the compiled per-device program ({n_dev} device(s)); adds element-wise ops and "
              "the optimizer, counts a loop body once (EFA's lax.map), skips custom calls (cuDNN attention)")
  achieved = counted.train_total / step_time
  results.add(f"{name}/model_tflops_per_sec", achieved / 1e12, "TFLOP/s", cfg,
              "analytic FLOPs / step time, all devices")
  peak_flops = flops.peak_flops(jax.devices()[0].device_kind, config.model.dtype)
  if peak_flops is None:
    results.add(f"{name}/mfu", None, "%", cfg, f"no peak FLOP/s known for device kind {jax.devices()[0].device_kind!r}")
  else:
    results.add(f"{name}/mfu", 100.0 * achieved / (peak_flops * n_dev), "%", cfg,
                f"peak {peak_flops / 1e12:.1f} TFLOP/s per device ({config.model.dtype} dense) × {n_dev}")
  s.state = state

  if args.profile_dir:
    path = os.path.join(args.profile_dir, config.model.name)
    with jax.profiler.trace(path):
      for _ in range(int(args.profile_steps)):
        s.state, metrics = compiled(s.state, s.batch)
      jax.block_until_ready((s.state, metrics))
    top = top_ops(path, int(args.profile_top), hlo_op_names(compiled.as_text()))
    results.extras.setdefault("profiles", {})[config.model.name] = {"trace_dir": path, "top_ops": top}
    table = _ops_markdown(top)
    results.extras.setdefault("markdown_tables", {})[f"Top ops, {config.model.name} train step ({path})"] = table
    print(f"\nTop ops of {config.model.name} ({int(args.profile_steps)} steps, trace in {path}):\n{table}\n")


def flops_table(configs: Sequence[Any], batch_sizes: Sequence[int]) -> str:
  """Markdown: analytic forward FLOPs per step by component for each config, plus fwd+bwd totals."""
  from tpsearch_jax import flops  # pylint: disable=g-import-not-at-top

  counts = [flops.train_step_flops(c, b) for c, b in zip(configs, batch_sizes)]
  groups = []
  for c in counts:
    groups += [g for g in c.grouped() if g not in groups]
  head = "| component (forward) | " + " | ".join(f"{c.model.name} B={b}" for c, b in zip(configs, batch_sizes)) + " |"
  lines = [head, "|---|" + "---:|" * len(configs)]
  for g in groups:
    lines.append(f"| {g} | " + " | ".join(f"{c.grouped().get(g, 0.0):.4g}" for c in counts) + " |")
  lines.append("| **forward total** | " + " | ".join(f"{c.forward_total:.4g}" for c in counts) + " |")
  lines.append("| **train step (fwd + bwd)** | " + " | ".join(f"{c.train_total:.4g}" for c in counts) + " |")
  lines.append("| per sample (fwd + bwd) | " + " | ".join(f"{c.per_sample:.4g}" for c in counts) + " |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- profile


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


def _ops_markdown(top: list[dict]) -> str:
  if not top:
    return "(no op events found in the trace)"
  lines = ["| op | JAX source (op_name, tail) | total ms | count | % of op time |", "|---|---|---:|---:|---:|"]
  lines += [f"| `{o['name'][:60]}` | `{o.get('source', '')[-90:]}` | {o['total_ms']:.3f} | {o['count']} | "
            f"{o['percent']:.1f} |" for o in top]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- eval


def _eval_batches(kind: str, n: int, batch: int, ids: int, template: np.ndarray, rng) -> list[dict]:
  """``n`` rows in padded batches of ``batch`` (the pipeline's ``valid`` mask); every batch shares ``template``."""
  pids = rng.permutation(np.arange(n) % ids).astype(np.int32)
  out = []
  for start in range(0, n, batch):
    rows = min(batch, n - start)
    p = np.zeros((batch,), np.int32)
    p[:rows] = pids[start:start + rows]
    out.append({kind: template, "pids": p, "valid": np.arange(batch) < rows})
  return out


def _eval_templates(config, batch: int, rng) -> tuple[np.ndarray, np.ndarray]:
  h, w = config.data.image_size
  images = rng.standard_normal((batch, h, w, 3), dtype=np.float32)
  ids = synthetic_train_batch(config, batch, rng)["caption_ids"]
  return images, ids


def bench_eval(s: MethodSetup, results: Results, preset: Preset, args) -> None:
  """Encoding throughput (images/s, texts/s) and end-to-end test evaluations with the project's Evaluator."""
  from tpsearch_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top

  config = s.config
  eb = int(config.eval.batch_size)
  cfg = _config_summary(config, eval_batch_size=eb)
  cfg.pop("batch_size")
  name = f"eval/{config.model.name}"
  evaluator = eval_lib.Evaluator(s.model, s.mesh, s.shardings.params, block_size=int(config.eval.block_size))
  rng = np.random.default_rng(1)
  images, ids = _eval_templates(config, eb, rng)
  params = s.state.params
  nb = int(args.eval_batches or preset.eval_batches)
  windows = int(args.windows or preset.windows)
  for kind, template, unit in (("images", images, "images/s"), ("caption_ids", ids, "texts/s")):
    batches = _eval_batches(kind, nb * eb, eb, max(nb * eb // 4, 1), template, rng)
    t0 = time.perf_counter()
    jax.block_until_ready(evaluator.encode(params, batches[:1], kind)[0])
    first = time.perf_counter() - t0
    if nb > 1:
      jax.block_until_ready(evaluator.encode(params, batches, kind)[0])  # the gather for nb batches compiles here

    def run(batches=batches, kind=kind):
      jax.block_until_ready(evaluator.encode(params, batches, kind)[0])

    t, _ = _median_time(run, windows)
    label = "images" if kind == "images" else "texts"
    results.add(f"{name}/encode_{label}_per_sec", nb * eb / t, unit, cfg,
                f"{nb} batch(es) of {eb} incl. host→device copies; first batch with compile {first:.2f} s")

  sizes = [x for x in (args.eval_sizes.split(",") if args.eval_sizes is not None else preset.eval_sizes) if x]
  for size in sizes:
    n_img, n_txt, n_ids = DATASET_SIZES[size]
    img_b = _eval_batches("images", n_img, eb, n_ids, images, rng)
    txt_b = _eval_batches("caption_ids", n_txt, eb, n_ids, ids, rng)
    t0 = time.perf_counter()
    evaluator.evaluate(params, img_b, txt_b)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    row = evaluator.evaluate(params, img_b, txt_b)
    total = time.perf_counter() - t0
    if row["num_queries"] != n_txt or row["num_gallery"] != n_img:
      raise RuntimeError(f"{name}/{size}: evaluated {row['num_queries']}×{row['num_gallery']}, expected "
                         f"{n_txt}×{n_img}")
    results.add(f"{name}/{size}_test_eval_time", total, "s", dict(cfg, images=n_img, texts=n_txt),
                f"encode {n_img:,} images + {n_txt:,} captions + metrics (warm; first call {first:.2f} s)")
  if sizes:
    peak = _peak_memory()
    results.add(f"{name}/peak_memory", None if peak is None else peak / 2 ** 30, "GiB", cfg,
                "process-wide peak_bytes_in_use after the evaluations (includes training unless --skip=train)"
                if peak is not None else f"memory_stats() not reported on {jax.devices()[0].platform}")


# ----------------------------------------------------------------------------------------------------- metrics


def bench_metrics(results: Results, preset: Preset, args) -> None:
  """retrieval_metrics (from a [Q, G] matrix) and retrieval_metrics_from_embeddings at dataset test sizes."""
  from tpsearch_jax import metrics  # pylint: disable=g-import-not-at-top

  sizes = args.metrics_sizes.split(",") if args.metrics_sizes is not None else list(preset.metrics_sizes)
  dim = 512 if not preset.tiny else 64
  block = int(load_default_config("irra", args.config_file).eval.block_size)
  rng = np.random.default_rng(2)
  for size in [x for x in sizes if x]:
    n_img, n_txt, n_ids = DATASET_SIZES[size]
    gp = rng.permutation(np.arange(n_img) % n_ids).astype(np.int32)
    qp = rng.permutation(np.arange(n_txt) % n_ids).astype(np.int32)
    kq, kg = jax.random.split(jax.random.PRNGKey(len(size) + n_img))
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q = jax.jit(lambda k: unit(jax.random.normal(k, (n_txt, dim))))(kq)
    g = jax.jit(lambda k: unit(jax.random.normal(k, (n_img, dim))))(kg)
    sim = jax.block_until_ready(jax.jit(lambda a, b: a @ b.T)(q, g))
    cfg = {"queries": n_txt, "gallery": n_img, "ids": n_ids, "dim": dim}
    for label, fn, extra in (
        ("retrieval_metrics", lambda: metrics.retrieval_metrics(sim, qp, gp), {}),
        ("retrieval_metrics_from_embeddings",
         lambda: metrics.retrieval_metrics_from_embeddings(q, g, qp, gp, block_size=block), {"block_size": block})):
      t0 = time.perf_counter()
      fn()
      first = time.perf_counter() - t0
      t, _ = _median_time(fn, int(args.metrics_repeats))
      results.add(f"metrics/{size}/{label}", t, "s", dict(cfg, **extra),
                  f"{n_txt:,} queries × {n_img:,} gallery; first call (with compile) {first:.2f} s")
    del sim, q, g


# ----------------------------------------------------------------------------------------------------- search


def bench_search(results: Results, preset: Preset, args) -> None:
  """Index build time and queries/s of the sharded brute-force top-k search."""
  from tpsearch_jax import search_index  # pylint: disable=g-import-not-at-top

  rows = int(args.search_rows or preset.search_rows)
  dim = int(preset.search_dim)
  qb = int(args.search_query_batch or preset.search_query_batch)
  k = int(args.search_k)
  dtype = jnp.dtype(args.search_dtype)
  cfg = {"rows": rows, "dim": dim, "query_batch": qb, "k": k, "index_dtype": dtype.name,
         "devices": jax.device_count()}
  emb = jax.block_until_ready(jax.jit(lambda k: jax.random.normal(k, (rows, dim), dtype))(jax.random.PRNGKey(3)))
  t0 = time.perf_counter()
  index = search_index.build_index(emb, np.arange(rows, dtype=np.int32), dtype=dtype,
                                   block_size=int(args.search_block))
  jax.block_until_ready(index.embeddings)
  results.add("search/index_build_time", time.perf_counter() - t0, "s", cfg,
              "build_index on device-resident embeddings: normalise + cast + pad + shard")
  del emb
  queries = jax.random.normal(jax.random.PRNGKey(4), (qb, dim), jnp.float32)
  t0 = time.perf_counter()
  jax.block_until_ready(search_index.search(index, queries, k))
  results.add("search/first_call_time", time.perf_counter() - t0, "s", cfg, "includes compilation")
  nb = int(args.search_batches or preset.search_batches)

  def run():
    out = None
    for _ in range(nb):
      out = search_index.search(index, queries, k)
    jax.block_until_ready(out)

  t, _ = _median_time(run, int(args.windows or preset.windows))
  results.add("search/queries_per_sec", nb * qb / t, "queries/s", cfg, f"exact top-{k}; {nb} batch(es) per window")
  results.add("search/batch_latency", t / nb * 1e3, "ms", cfg, f"one batch of {qb} queries")


# ----------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m tpsearch_jax.benchmark", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                 help="auto = full on GPU/TPU, small on CPU")
  p.add_argument("--methods", default="irra,fmfa,pcc,combined,clip", help="comma-separated method presets")
  p.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}")
  p.add_argument("--batch_size", type=int, default=None, help="global train batch (default: preset)")
  p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                 help="compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU")
  p.add_argument("--remat", action=argparse.BooleanOptionalAction, default=False, help="rematerialise blocks")
  p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=False,
                 help="shard params and optimizer state over the devices")
  p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"],
                 help="attention implementation; auto = cudnn on GPU in bf16 (falls back to xla), else xla")
  p.add_argument("--steps", type=int, default=None, help="train steps per timing window")
  p.add_argument("--windows", type=int, default=None, help="timing windows (median reported) for train, encode, search")
  p.add_argument("--warmup", type=int, default=None, help="untimed steps after compilation")
  p.add_argument("--eval_batch_size", type=int, default=None)
  p.add_argument("--eval_batches", type=int, default=None, help="batches per encoding-throughput window")
  p.add_argument("--eval_sizes", default=None, help=f"end-to-end evaluations, of {','.join(DATASET_SIZES)}")
  p.add_argument("--metrics_sizes", default=None, help=f"retrieval-metric timings, of {','.join(DATASET_SIZES)}")
  p.add_argument("--metrics_repeats", type=int, default=1)
  p.add_argument("--search_rows", type=int, default=None, help="index size")
  p.add_argument("--search_query_batch", type=int, default=None)
  p.add_argument("--search_batches", type=int, default=None)
  p.add_argument("--search_k", type=int, default=10)
  p.add_argument("--search_block", type=int, default=65536, help="index rows scored per block")
  p.add_argument("--search_dtype", default="bfloat16", choices=["bfloat16", "float32"])
  p.add_argument("--profile_dir", default=None, help="trace a few train steps per method here; prints the top ops")
  p.add_argument("--profile_steps", type=int, default=3)
  p.add_argument("--profile_top", type=int, default=15)
  p.add_argument("--config_file", default=str(_DEFAULT_CONFIG), help="file with get_config(method)")
  p.add_argument("--out", default=None, help="write the JSON records here")
  p.add_argument("--markdown", default=None, help="also write the Markdown table here")
  args = p.parse_args(argv)
  unknown = set(filter(None, args.skip.split(","))) - set(SECTIONS)
  if unknown:
    p.error(f"--skip: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
  for flag in ("eval_sizes", "metrics_sizes"):
    value = getattr(args, flag)
    bad = set(filter(None, (value or "").split(","))) - set(DATASET_SIZES)
    if bad:
      p.error(f"--{flag}: unknown size(s) {sorted(bad)}; choose from {','.join(DATASET_SIZES)}")
  return args


def _resolve_attention(args) -> str:
  if args.attention != "auto":
    return args.attention
  accel = jax.default_backend() == "gpu"
  bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and accel)
  return "cudnn" if accel and bf16 else "xla"


def run(args: argparse.Namespace) -> Results:
  """Runs the selected sections; returns the collected results (also printed as they come)."""
  backend = jax.default_backend()
  preset_name = args.preset if args.preset != "auto" else ("small" if backend == "cpu" else "full")
  preset = PRESETS[preset_name]
  skip = set(filter(None, args.skip.split(",")))
  methods = [m for m in args.methods.split(",") if m]
  meta = _device_meta()
  meta.update(preset=preset_name, preset_description=preset.description, argv=sys.argv[1:],
              methods=methods, skip=sorted(skip))
  results = Results(meta)
  print(f"tpsearch_jax benchmark — preset {preset_name}: {preset.description}")
  print(f"device {meta['device']} × {meta['num_devices']} ({meta['platform']}), host {meta['hardware']}")
  if backend == "cpu":
    print("CPU run: timings are for this host only; MFU and device memory are not available.")
  from tpsearch_jax import flops  # pylint: disable=g-import-not-at-top
  peak = flops.peak_flops(meta["device"], "bfloat16")
  results.add("device/peak_flops", peak, "FLOP/s", {"device_kind": meta["device"], "dtype": "bfloat16"},
              "dense peak per device used for MFU" if peak else "unknown for this device: MFU n/a")

  attention = _resolve_attention(args)
  configs, batch_sizes = [], []
  for method in methods:
    config = method_config(method, preset, args, attention)
    configs.append(config)
    batch_sizes.append(int(config.train.batch_size))
    if {"train", "eval"} <= skip:
      continue
    print(f"\n[{method}]", flush=True)
    s = _setup_with_fallback(config, compile_now="train" not in skip, auto=args.attention == "auto")
    if "train" not in skip:
      bench_train(s, results, preset, args)
    if "eval" not in skip:
      bench_eval(s, results, preset, args)
    del s
  if configs:
    table = flops_table(configs, batch_sizes)
    results.extras.setdefault("markdown_tables", {})["Analytic FLOPs per train step (forward by component)"] = table
    results.extras["flops"] = {c.model.name: {"batch_size": b, **flops.train_step_flops(c, b).grouped()}
                               for c, b in zip(configs, batch_sizes)}
  if "metrics" not in skip:
    print("\n[metrics]", flush=True)
    bench_metrics(results, preset, args)
  if "search" not in skip:
    print("\n[search]", flush=True)
    bench_search(results, preset, args)
  return results


def _setup_with_fallback(config, compile_now: bool, auto: bool) -> MethodSetup:
  """setup_method (+ the step's compilation); cuDNN attention chosen by "auto" falls back to XLA if it fails."""
  try:
    s = setup_method(config)
    if compile_now or (auto and config.model.attention_impl == "cudnn"):
      compile_step(s)
    return s
  except Exception as e:  # pylint: disable=broad-except
    if not (auto and config.model.attention_impl == "cudnn"):
      raise
    _LOG.warning("cuDNN attention failed here (%s: %s); using XLA attention", type(e).__name__, e)
  with config.unlocked():
    config.model.attention_impl = None
  s = setup_method(config)
  if compile_now:
    compile_step(s)
  return s


def main(argv: Sequence[str] | None = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  args = parse_args(argv)
  results = run(args)
  text = results.markdown()
  print("\n" + text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(results.to_json(), f, indent=2)
      f.write("\n")
    print(f"\nwrote {args.out}")
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
