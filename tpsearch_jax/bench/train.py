"""Train section: compile time, steady-state step time, memory, FLOPs and MFU of the training library's step."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

import jax

from tpsearch_jax import batch as batch_lib
from tpsearch_jax.bench import flops
from tpsearch_jax import sharding
from tpsearch_jax.bench.presets import Preset, config_summary
from tpsearch_jax.bench.records import Results, add_peak_memory, median_time
from tpsearch_jax.models import build_model
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.config_checks import check_parallelism
from tpsearch_jax.training.options import Options, run_options

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class MethodSetup:
  """A method ready to run: its config and options, model, mesh, sharded TrainState, the jitted step and one global
  train batch."""

  config: Any
  options: Options
  model: Any
  mesh: Any
  state: Any
  shardings: Any
  step: Callable
  batch: dict
  compiled: Any = None  # the step, lowered and compiled for (state, batch)
  compile_time: float | None = None


def setup_method(config, options: Options, seed: int = 0) -> MethodSetup:
  """Model, sharded TrainState and the jitted train step of ``config`` (resolved; ``options``: its ``run_options``)
  on a fake global batch (no compilation yet)."""
  mesh = sharding.create_mesh()
  check_parallelism(config, mesh)
  model = build_model(options)
  batch_np = batch_lib.fake_train_batch(options.batch_options, int(config.train.batch_size), seed)
  state, tx, shardings = state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(seed), batch_np)
  step = state_lib.make_train_step(options.loss, model, tx, mesh, shardings)
  return MethodSetup(config, options, model, mesh, state, shardings, step, sharding.to_global(batch_np, mesh))


def compile_step(s: MethodSetup) -> None:
  """Lowers and compiles the train step for the setup's state and batch; records the wall time."""
  t0 = time.perf_counter()
  s.compiled = s.step.jitted.lower(s.state, s.batch).compile()
  s.compile_time = time.perf_counter() - t0


def setup_with_fallback(config, options: Options, compile_now: bool, auto: bool) -> MethodSetup:
  """setup_method (+ the step's compilation); cuDNN attention chosen by "auto" falls back to XLA if it fails (the
  config changes, so its options are read again)."""
  cudnn = auto and config.model.attention_impl == "cudnn"
  try:
    s = setup_method(config, options)
    if compile_now or cudnn:
      compile_step(s)
    return s
  except Exception as e:  # pylint: disable=broad-except
    if not cudnn:
      raise
    _LOG.warning("cuDNN attention failed here (%s: %s); using XLA attention", type(e).__name__, e)
  with config.unlocked():
    config.model.attention_impl = None
  s = setup_method(config, run_options(config))
  if compile_now:
    compile_step(s)
  return s


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
  """FLOPs of the compiled per-device program by XLA's cost analysis, None when not reported."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def bench_train(s: MethodSetup, results: Results, preset: Preset, args) -> None:
  """Compile time, steady-state step time, memory, FLOPs and MFU of the train step on the setup's mesh."""
  config = s.config
  cfg = config_summary(config, s.options)
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

  step_time, all_times = median_time(window, int(args.windows or preset.windows))
  step_time /= steps
  if metrics is not None and not bool(jax.device_get(metrics["finite"])):
    _LOG.warning("%s: the loss is not finite after the timed steps (%s)", name, jax.device_get(metrics["loss"]))
  n_dev = s.mesh.size
  spread = f"windows of {steps} step(s): " + ", ".join(f"{t / steps * 1e3:.1f}" for t in all_times) + " ms/step"
  results.add(f"{name}/step_time", step_time * 1e3, "ms", cfg, f"median; {spread}")
  results.add(f"{name}/steps_per_sec", 1.0 / step_time, "steps/s", cfg)
  results.add(f"{name}/samples_per_sec", b / step_time, "samples/s", cfg, f"global batch {b} on {n_dev} device(s)")

  add_peak_memory(results, f"{name}/peak_memory", cfg, "process-wide peak_bytes_in_use so far (max over devices)")
  need = _compiled_memory(compiled)
  results.add(f"{name}/compiled_memory", None if need is None else need / 2 ** 30, "GiB", cfg,
              "XLA memory analysis of the step: arguments + outputs + temporaries − donated, per device")

  counted = flops.train_step_flops(s.options, b)
  results.add(f"{name}/flops_per_step", counted.train_total, "FLOP", cfg,
              "analytic model FLOPs (matmuls, fwd + bwd, no remat recompute)")
  results.add(f"{name}/flops_per_sample", counted.per_sample, "FLOP", cfg, "analytic")
  results.add(f"{name}/xla_flops_per_device_step", _xla_flops(compiled), "FLOP", cfg,
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


def flops_table(options: Sequence[Options], batch_sizes: Sequence[int]) -> str:
  """Markdown: analytic forward FLOPs per step by component for each method's ``options``, plus fwd+bwd totals."""
  counts = [flops.train_step_flops(o, b) for o, b in zip(options, batch_sizes)]
  groups = []
  for c in counts:
    groups += [g for g in c.grouped() if g not in groups]
  head = "| component (forward) | " + " | ".join(f"{o.model.name} B={b}" for o, b in zip(options, batch_sizes)) + " |"
  lines = [head, "|---|" + "---:|" * len(options)]
  for g in groups:
    lines.append(f"| {g} | " + " | ".join(f"{c.grouped().get(g, 0.0):.4g}" for c in counts) + " |")
  lines.append("| **forward total** | " + " | ".join(f"{c.forward_total:.4g}" for c in counts) + " |")
  lines.append("| **train step (fwd + bwd)** | " + " | ".join(f"{c.train_total:.4g}" for c in counts) + " |")
  lines.append("| per sample (fwd + bwd) | " + " | ".join(f"{c.per_sample:.4g}" for c in counts) + " |")
  return "\n".join(lines)
