"""Training and evaluation loop (jit + NamedSharding over a "data" mesh axis; orbax checkpoints; CLU logging).

``train_and_evaluate(config, workdir)`` trains with periodic evaluation on ``config.eval.select_on``, keeps the last
N checkpoints and the best one, resumes from ``workdir`` automatically, and ends with an evaluation of the selected
checkpoint written to ``workdir/results.json``. ``evaluate_only(config, workdir)`` does the last part for a
checkpoint in ``workdir`` or imported CLIP weights. ``create_train_state`` and ``make_train_step`` are usable on
their own with in-memory batches (no TensorFlow on that path).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from tpsearch_jax import checkpointing as ckpt_lib
from tpsearch_jax import evaluate as eval_lib
from tpsearch_jax import optim
from tpsearch_jax import sharding as shd
from tpsearch_jax.data import tokenizer

SELECT_CHOICES = ("val", "test", "none")
HOW_TO_GET = {
    "cuhk_pedes": "CUHK-PEDES: request the images from the dataset authors (see the ShuangLI59/Person-Search-with-"
                  "Natural-Language-Description README; academic use only) and place reid_raw.json beside imgs/.",
    "icfg_pedes": "ICFG-PEDES: request it from the SSAN authors (zifyloo/SSAN README); place ICFG-PEDES.json beside "
                  "imgs/.",
    "rstp_reid": "RSTPReid: download from the NjtechCVLab/RSTPReid-Dataset README links; place data_captions.json "
                 "beside imgs/.",
    "synthetic_pedes": "synthetic_pedes: generated automatically on first use (python -m tpsearch_jax.data.synthetic).",
}


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: step int32 [], params (f32), optimizer state, base PRNG key uint32 [2]."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


# --------------------------------------------------------------------------------------------- configuration


def resolve_config(config: ml_collections.ConfigDict, num_classes: int | None = None) -> ml_collections.ConfigDict:
  """Copy of ``config`` with "auto" dtype resolved and ``model.num_classes`` filled from the data; validates."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    if c.model.dtype == "auto":
      c.model.dtype = "bfloat16" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "float32"
    if c.model.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"config.model.dtype={c.model.dtype!r}: expected 'auto', 'float32' or 'bfloat16'")
    if num_classes is not None:
      if c.model.num_classes is None:
        c.model.num_classes = int(num_classes)
      elif c.model.num_classes != num_classes:
        raise ValueError(f"config.model.num_classes={c.model.num_classes} but the training split has {num_classes} "
                         "identities; leave it unset to use the data's count")
  h, w = c.data.image_size
  p = c.model.clip.patch_size
  if h % p or w % p:
    raise ValueError(f"config.data.image_size={tuple(c.data.image_size)} is not divisible by the patch size {p} "
                     "(config.model.clip.patch_size)")
  if tuple(c.model.clip.image_size) != tuple(c.data.image_size):
    raise ValueError(f"config.model.clip.image_size={tuple(c.model.clip.image_size)} differs from "
                     f"config.data.image_size={tuple(c.data.image_size)}")
  if c.data.context_length != c.model.clip.context_length:
    raise ValueError(f"config.data.context_length={c.data.context_length} differs from "
                     f"config.model.clip.context_length={c.model.clip.context_length}")
  select = c.eval.select_on
  if select is None:
    raise ValueError(f"config.eval.select_on is not set. {c.data.name or 'This dataset'} needs an explicit choice: "
                     "--config.eval.select_on=none (report the last checkpoint) or --config.eval.select_on=test "
                     "(reproduction of the published protocol: selects the checkpoint on the TEST set)")
  if select not in SELECT_CHOICES:
    raise ValueError(f"config.eval.select_on={select!r}: expected one of {SELECT_CHOICES}")
  return c


def warn_if_test_selection(config) -> None:
  """Loud log when the checkpoint is selected on the test split."""
  if config.eval.select_on == "test":
    msg = ("config.eval.select_on='test': the checkpoint is SELECTED ON THE TEST SET (the IRRA/FMFA reproduction "
           "protocol). Test numbers from this run are optimistic and not a held-out estimate.")
    logging.warning("=" * 100)
    logging.warning(msg)
    logging.warning("=" * 100)


def check_parallelism(config, mesh) -> None:
  """Batch sizes must split evenly over the devices and processes (raised before anything compiles)."""
  shd.check_batch_size(int(config.train.batch_size), mesh, "config.train.batch_size")
  shd.check_batch_size(int(config.eval.batch_size), mesh, "config.eval.batch_size")


# --------------------------------------------------------------------------------------------- data


def load_annotations(config):
  """Reads (for synthetic_pedes first generates, if missing) the dataset; clear error naming the folder otherwise."""
  from tpsearch_jax.data import annotations as ann_lib

  d = config.data
  root = os.path.abspath(os.path.expanduser(d.root))
  if d.name == "synthetic_pedes":
    from tpsearch_jax.data import synthetic
    args = dict(d.synthetic)
    if jax.process_index() == 0:
      synthetic.ensure(root, **args)
    multihost_utils.sync_global_devices("synthetic_pedes ready")
    if jax.process_index() > 0 and not os.path.isfile(os.path.join(root, "reid_raw.json")):
      synthetic.ensure(root, **args)  # not a shared file system: every host writes its own (identical) copy
  try:
    return ann_lib.read_annotations(d.name, root, skip_missing=bool(d.skip_missing))
  except (ann_lib.AnnotationError, FileNotFoundError) as e:
    raise ann_lib.AnnotationError(
        f"{e}\nLooked in {root} (config.data.root). {HOW_TO_GET.get(d.name, '')} "
        f"Point --config.data.root at the dataset folder.") from e


def _hide_gpus_from_tf() -> None:
  """TensorFlow (input pipeline, summary writer) must not claim accelerator memory; imported here, lazily."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised
    pass


def train_batches(config, ann, start_step: int) -> Iterable[dict[str, np.ndarray]]:
  """Process-local numpy train batches from step ``start_step`` on (deterministic in (seed, step))."""
  _hide_gpus_from_tf()
  from tpsearch_jax.data import input_pipeline
  return input_pipeline.train_iterator(
      ann.train, config.data, int(config.train.batch_size), int(config.seed), start_step=int(start_step),
      process_index=jax.process_index(), process_count=jax.process_count())


def eval_batches(config, ann, split: str):
  """(image batches, text batches) of ``split`` for this process (padded, with "valid" masks)."""
  _hide_gpus_from_tf()
  from tpsearch_jax.data import input_pipeline
  return input_pipeline.eval_datasets(ann.split(split), config.data, int(config.eval.batch_size),
                                      process_index=jax.process_index(), process_count=jax.process_count())


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per pass over the training captions (remainder dropped, as the input pipeline does)."""
  from tpsearch_jax.data import samplers
  return samplers.steps_per_epoch(num_examples, global_batch_size)


def example_batch(config, batch_size: int = 2) -> dict[str, np.ndarray]:
  """A train batch of the contract's shapes (values arbitrary but valid): images, caption/mlm ids, labels, pids."""
  h, w = config.data.image_size
  length = int(config.data.context_length)
  ids = np.zeros((batch_size, length), np.int32)
  ids[:, 0], ids[:, 1:4], ids[:, 4] = tokenizer.SOT_ID, 320, tokenizer.EOT_ID
  labels = np.zeros_like(ids)
  labels[:, 2] = 320
  mlm = ids.copy()
  mlm[:, 2] = tokenizer.MASK_ID
  k = max(int(config.model.num_classes or 1), 1)
  return {"images": np.zeros((batch_size, h, w, 3), np.float32), "caption_ids": ids, "mlm_ids": mlm,
          "mlm_labels": labels, "pids": (np.arange(batch_size) % k).astype(np.int32),
          "image_ids": np.arange(batch_size, dtype=np.int32)}


# --------------------------------------------------------------------------------------------- state and step


def _init_fn(model, batch):
  def init(rng):
    k_params, k_dropout, k_mining = jax.random.split(rng, 3)
    return model.init({"params": k_params, "dropout": k_dropout, "mining": k_mining}, batch, train=True)["params"]
  return init


def abstract_train_state(config, model, mesh, example: Mapping[str, np.ndarray], *, steps_per_epoch: int = 1):
  """(abstract TrainState of ShapeDtypeStructs with shardings, tx, state shardings) — nothing allocated."""
  tx = optim.create_optimizer(config, steps_per_epoch)
  rng = jax.random.PRNGKey(0)
  batch = {k: jnp.asarray(v) for k, v in example.items()}
  params = jax.eval_shape(_init_fn(model, batch), rng)
  opt_state = jax.eval_shape(tx.init, params)
  fsdp, min_size = bool(config.train.fsdp), int(config.train.fsdp_min_size)
  rep = shd.replicated(mesh)
  shardings = TrainState(step=rep, params=shd.tree_shardings(mesh, params, fsdp, min_size),
                         opt_state=shd.tree_shardings(mesh, opt_state, fsdp, min_size), rng=rep)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype))
  return ckpt_lib.abstract_with_shardings(abstract, shardings), tx, shardings


def create_train_state(config, model, mesh, rng: jax.Array, example_batch: Mapping[str, np.ndarray], *,
                       steps_per_epoch: int = 1, clip_params: Mapping | None = None):
  """Initialised TrainState on ``mesh`` → (state, tx, state shardings).

  rng: PRNGKey uint32 [2] (params, then the per-step keys fold in the step). example_batch: any batch size, shapes
  of the batch contract. clip_params: pretrained ``params["clip"]`` subtree (numpy) to replace the random one.
  """
  abstract, tx, shardings = abstract_train_state(config, model, mesh, example_batch, steps_per_epoch=steps_per_epoch)
  batch = {k: jnp.asarray(v) for k, v in example_batch.items()}
  k_init, k_state = jax.random.split(rng)
  params = jax.jit(_init_fn(model, batch), out_shardings=shardings.params)(k_init)
  if clip_params is not None:
    params = dict(params)
    params["clip"] = _place_like(clip_params, abstract.params["clip"], shardings.params["clip"])
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  state = TrainState(step=step, params=params, opt_state=opt_state, rng=jax.device_put(k_state, shardings.rng))
  return state, tx, shardings


def _place_like(tree, abstract, shardings):
  """Numpy tree → jax.Arrays with ``shardings``; raises naming any leaf whose path, shape or dtype differs."""
  want = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
  have = {jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(tree)}
  problems = sorted(set(want) ^ set(have))
  problems += [f"{k}: {have[k].shape} vs {want[k].shape}" for k in sorted(set(want) & set(have))
               if have[k].shape != want[k].shape]
  if problems:
    raise ValueError("pretrained CLIP params do not fit params['clip'] of the model: " + "; ".join(problems[:20]))
  return jax.tree.map(lambda a, x, s: jax.device_put(np.asarray(x, a.dtype), s), abstract, tree, shardings)


def make_train_step(config, model, tx, mesh, state_sharding) -> Callable:
  """jit((state, global batch) → (state, metrics)) with the state donated.

  metrics: {"loss", each loss term and accuracy of the model, "grad_norm", "finite" (bool: total loss is finite)},
  all replicated scalars. The batch may be process-local numpy (converted here) or global jax.Arrays.
  """
  del config
  batch_sh = shd.batch_sharding(mesh)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    k_mining, k_dropout = jax.random.split(rng)

    def loss_fn(params):
      return model.apply({"params": params}, batch, train=True, rngs={"mining": k_mining, "dropout": k_dropout})

    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
    metrics.update(loss=total, grad_norm=optax.tree.norm(grads), finite=jnp.isfinite(total))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  jitted = jax.jit(step_fn, in_shardings=(state_sharding, batch_sh),
                   out_shardings=(state_sharding, shd.replicated(mesh)), donate_argnums=(0,))

  @functools.wraps(step_fn)
  def train_step(state, batch):
    if any(isinstance(v, np.ndarray) for v in batch.values()):
      batch = shd.to_global(batch, mesh)
    return jitted(state, batch)

  train_step.jitted = jitted
  return train_step


# --------------------------------------------------------------------------------------------- metrics plumbing


class NonFiniteLossError(FloatingPointError):
  """The total loss became NaN/Inf; the message names the step and the offending terms."""


def summarize_train_metrics(pending: Sequence[tuple[int, Mapping[str, jax.Array]]]) -> dict[str, float]:
  """[(step, metrics)] since the last log → mean per key; raises NonFiniteLossError at the first bad step."""
  host = jax.device_get([m for _, m in pending])
  for (step, _), m in zip(pending, host):
    if not bool(m["finite"]):
      bad = {k: float(v) for k, v in m.items() if k != "finite" and not np.isfinite(v)}
      raise NonFiniteLossError(f"non-finite loss at step {step}: {bad or {'loss': float(m['loss'])}} "
                               f"(all terms: { {k: float(v) for k, v in m.items() if k != 'finite'} })")
  keys = [k for k in host[0] if k != "finite"]
  return {k: float(np.mean([float(m[k]) for m in host])) for k in keys}


# --------------------------------------------------------------------------------------------- setup shared by modes


@dataclasses.dataclass
class Setup:
  config: ml_collections.ConfigDict
  ann: Any
  mesh: Any
  model: Any
  steps_per_epoch: int
  abstract: Any
  tx: Any
  shardings: Any
  eval_data: dict = dataclasses.field(default_factory=dict)  # split → (image batches, text batches), re-iterable
  _evaluator: Any = None

  @property
  def evaluator(self) -> eval_lib.Evaluator:
    """One Evaluator (its jitted encoders compile once) for every evaluation of the run."""
    if self._evaluator is None:
      self._evaluator = eval_lib.Evaluator(self.model, self.mesh, self.shardings.params,
                                           block_size=int(self.config.eval.block_size))
    return self._evaluator


def _setup(config, workdir: str, config_file: str = "config.json") -> Setup:
  from tpsearch_jax.models import build_model  # pylint: disable=g-import-not-at-top

  resolve_config(config)  # cheap validation before touching the data
  ann = load_annotations(config)
  config = resolve_config(config, ann.num_classes)
  warn_if_test_selection(config)
  if config.eval.select_on == "val" and not ann.spec.has_val:
    raise ValueError(f"{ann.spec.display_name} has no val split: set --config.eval.select_on=none or =test")
  mesh = shd.create_mesh()
  check_parallelism(config, mesh)
  logging.info("Mesh %s over %d devices (%d processes); backend %s; compute dtype %s", dict(mesh.shape),
               mesh.size, jax.process_count(), jax.default_backend(), config.model.dtype)
  model = build_model(config)
  spe = steps_per_epoch(len(ann.train), int(config.train.batch_size))
  abstract, tx, shardings = abstract_train_state(config, model, mesh, example_batch(config), steps_per_epoch=spe)
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    (epath.Path(workdir) / config_file).write_text(config.to_json_best_effort(indent=2))
  return Setup(config, ann, mesh, model, spe, abstract, tx, shardings)


def _clip_params(config):
  if not config.init.clip:
    return None
  from tpsearch_jax.checkpoints import load_clip_params  # pylint: disable=g-import-not-at-top
  from tpsearch_jax.models import model_options  # pylint: disable=g-import-not-at-top
  clip_config = model_options(config)[0]
  logging.info("Initialising params['clip'] from %s", config.init.clip)
  return load_clip_params(config.init.clip, clip_config)


def _evaluate_splits(s: Setup, params, splits, step: int, checkpoint: str, epoch: int | None = None):
  rows = {}
  for split in splits:
    t0 = time.time()
    if split not in s.eval_data:
      s.eval_data[split] = eval_batches(s.config, s.ann, split)
    images, texts = s.eval_data[split]
    row = s.evaluator.evaluate(params, images, texts)
    row.update(step=int(step), checkpoint=checkpoint)
    if epoch is not None:
      row["epoch"] = int(epoch)
    rows[split] = row
    logging.info("eval %s @ step %d (%s): %s [%.1fs]", split, step, checkpoint,
                 ", ".join(f"{k} {row[k]:.3f}" for k in eval_lib.METRIC_KEYS), time.time() - t0)
  return rows


def _results_payload(s: Setup, rows, last_rows=None) -> dict:
  payload = {"dataset": s.config.data.name, "method": s.config.model.name, "select_on": s.config.eval.select_on,
             "splits": rows}
  if last_rows:
    payload["last"] = last_rows
  return payload


def _report(workdir, payload) -> None:
  path = eval_lib.write_results(workdir, payload)
  table = {f"{k}": v for k, v in payload["splits"].items()}
  table.update({f"{k} (last)": v for k, v in payload.get("last", {}).items()})
  logging.info("Results written to %s", path)
  if jax.process_index() == 0:
    print(eval_lib.format_table(table), flush=True)


# --------------------------------------------------------------------------------------------- train


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       callbacks: Sequence[Callable[[int], None]] = ()) -> dict:
  """Trains (resuming from ``workdir``), evaluates, writes ``workdir/results.json``; returns its payload.

  callbacks: called with the step number after every train step (e.g. extra periodic actions).
  Returns {"preempted": True, "step": n} without the final evaluation when stopped by SIGTERM.
  """
  _hide_gpus_from_tf()  # before CLU's summary writer starts TensorFlow
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

  workdir = ckpt_lib.resolve_dir(workdir)
  s = _setup(config, workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(s.config.train.keep_checkpoints),
                                       async_save=bool(s.config.train.async_checkpointing))
  try:
    state, step, best = _restore_or_init(s, checkpointer, writer)
    state, step, preempted = _train_loop(s, workdir, writer, checkpointer, state, step, best, callbacks)
    if preempted:
      return {"preempted": True, "step": step}
    checkpointer.wait()
    payload = _final_evaluation(s, writer, checkpointer, state, step)
    _report(workdir, payload)
    return payload
  finally:  # also on errors (non-finite loss, …): pending checkpoint writes complete, metrics are flushed
    writer.flush()
    checkpointer.close()


def _restore_or_init(s: Setup, checkpointer, writer):
  """(state, step, best-so-far) from the newest checkpoint in the work directory, or a fresh initialisation."""
  config = s.config
  best = {"split": config.eval.select_on, "metric": "R1", "value": None, "step": None}
  if checkpointer.latest_step() is None:
    state, _, _ = create_train_state(config, s.model, s.mesh, jax.random.PRNGKey(int(config.seed)),
                                     example_batch(config), steps_per_epoch=s.steps_per_epoch,
                                     clip_params=_clip_params(config))
    writer.write_hparams(_flatten(config.to_dict()))
    return state, 0, best
  state, meta = checkpointer.restore(s.abstract)
  best = meta.get("best", best)
  best_step = checkpointer.latest_step(ckpt_lib.BEST)
  if best_step is not None and best_step != best.get("step"):  # a best saved after the newest last-N checkpoint
    _, best_meta = checkpointer.restore(s.abstract, best_step, ckpt_lib.BEST)
    best = best_meta.get("best", best)
  step = int(meta["step"])
  if meta.get("steps_per_epoch") not in (None, s.steps_per_epoch):
    raise ValueError(f"{checkpointer.directory()} was written with {meta['steps_per_epoch']} steps per epoch, the "
                     f"current data and batch size give {s.steps_per_epoch}: resuming would change the schedule")
  logging.info("Resumed from %s at step %d (epoch %d); best so far %s", checkpointer.directory(), step,
               step // s.steps_per_epoch, best)
  return state, step, best


def _train_loop(s: Setup, workdir, writer, checkpointer, state, step: int, best: dict, callbacks):
  """Runs steps ``step``..stop with logging, per-epoch selection, checkpoints; → (state, step, preempted)."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top

  config, mesh = s.config, s.mesh
  select_on = config.eval.select_on
  total_steps = int(config.schedule.num_epochs) * s.steps_per_epoch
  stop_step = min(total_steps, int(config.train.num_steps)) if config.train.num_steps > 0 else total_steps
  logging.info("%d train captions, %d steps/epoch, training steps %d..%d of %d", len(s.ann.train),
               s.steps_per_epoch, step, stop_step, total_steps)
  train_step = make_train_step(config, s.model, s.tx, mesh, s.shardings)
  schedule = optim.make_schedule(config, s.steps_per_epoch)
  log_every = max(int(config.train.log_every_steps), 1)
  ckpt_every = int(config.train.checkpoint_every_steps) or s.steps_per_epoch
  eval_every = int(config.eval.every_epochs)
  hooks = [periodic_actions.ReportProgress(num_train_steps=stop_step, writer=writer, every_steps=log_every)]
  if config.train.profile and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, num_profile_steps=5))
  pending: list[tuple[int, Any]] = []

  def meta(at_step):
    return {"step": at_step, "epoch": at_step // s.steps_per_epoch, "data_position": at_step,
            "steps_per_epoch": s.steps_per_epoch, "seed": int(config.seed), "best": best}

  def flush(at_step):
    """Host sync: averaged train metrics to the writer; raises NonFiniteLossError before anything is saved."""
    if pending:
      summary = summarize_train_metrics(pending)
      summary["lr"] = float(schedule(at_step - 1))
      writer.write_scalars(at_step, {f"train/{k}": v for k, v in summary.items()})
      pending.clear()

  def preemption_requested(flag, at_step) -> bool:
    if jax.process_count() == 1:
      return flag.requested
    if at_step % log_every:  # hosts agree at log steps only (one collective)
      return False
    return bool(multihost_utils.process_allgather(np.asarray(flag.requested)).any())

  batches = shd.prefetch_to_mesh(iter(train_batches(config, s.ann, step)), mesh, int(config.train.prefetch))
  last_saved = step if checkpointer.latest_step() == step else None
  with ckpt_lib.PreemptionFlag() as flag:
    while step < stop_step:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        try:
          batch = next(batches)
        except StopIteration:
          raise RuntimeError(f"the train iterator ended at step {step}; it must be infinite") from None
        state, metrics = train_step.jitted(state, batch)
      step += 1
      pending.append((step, metrics))
      for h in hooks:
        h(step)
      for cb in callbacks:
        cb(step)
      epoch = step // s.steps_per_epoch
      if step % log_every == 0 or step == stop_step:
        flush(step)
      if select_on != "none" and eval_every > 0 and step % s.steps_per_epoch == 0 and epoch % eval_every == 0:
        flush(step)
        row = _evaluate_splits(s, state.params, [select_on], step, "current", epoch)[select_on]
        writer.write_scalars(step, {f"eval/{select_on}/{k}": row[k] for k in eval_lib.METRIC_KEYS})
        if best["value"] is None or row["R1"] > best["value"]:
          best.update(value=row["R1"], step=step, epoch=epoch)
          checkpointer.save(step, state, meta(step), ckpt_lib.BEST)
          logging.info("New best %s R1 %.3f at step %d", select_on, row["R1"], step)
      if step % ckpt_every == 0 or step == stop_step:
        flush(step)
        checkpointer.save(step, state, meta(step))
        last_saved = step
      if preemption_requested(flag, step):
        flush(step)
        if last_saved != step:
          checkpointer.save(step, state, meta(step))
        logging.warning("Stopped by SIGTERM at step %d; checkpoint saved in %s. Rerun the same command to resume.",
                        step, checkpointer.directory())
        return state, step, True
  flush(step)
  if last_saved != step:
    checkpointer.save(step, state, meta(step))
  return state, step, False


def _final_evaluation(s: Setup, writer, checkpointer, state, step: int) -> dict:
  """The selected checkpoint (best on config.eval.select_on, else the last state) on every config.eval.splits;
  when the best is not the last state, the last state too (under "last")."""
  config = s.config
  select_on = config.eval.select_on
  best_step = checkpointer.latest_step(ckpt_lib.BEST) if select_on != "none" else None
  last_rows = None
  if best_step is not None and best_step != step:
    best_state, _ = checkpointer.restore(s.abstract, best_step, ckpt_lib.BEST)
    rows = _evaluate_splits(s, best_state.params, config.eval.splits, best_step,
                            checkpointer.directory(ckpt_lib.BEST, best_step))
    del best_state
    last_rows = _evaluate_splits(s, state.params, config.eval.splits, step,
                                 checkpointer.directory(ckpt_lib.LAST, step))
  else:
    where = ckpt_lib.BEST if best_step == step else ckpt_lib.LAST
    rows = _evaluate_splits(s, state.params, config.eval.splits, step, checkpointer.directory(where, step))
  for name, row in rows.items():
    writer.write_scalars(step, {f"final/{name}/{k}": row[k] for k in eval_lib.METRIC_KEYS})
  return _results_payload(s, rows, last_rows)


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


# --------------------------------------------------------------------------------------------- eval only


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates ``config.eval.checkpoint`` of ``workdir`` (or imported ``config.init.clip``) on ``config.eval.splits``.

  "auto": the best checkpoint, else the newest of ``checkpoints/``, else ``config.init.clip``; "best"/"last" force
  one; any other value is a checkpoint step folder (``.../checkpoints/<step>`` or ``.../best/<step>``).
  """
  workdir = ckpt_lib.resolve_dir(workdir)
  s = _setup(config, workdir, config_file="eval_config.json")
  config = s.config
  which = config.eval.checkpoint
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints), async_save=False)
  source, step, params = None, 0, None
  if which in ckpt_lib.CHOICES:
    found = checkpointer.restore_choice(s.abstract, which)
    if found is not None:
      state, _, source = found
      step, params = int(os.path.basename(source)), state.params
  else:
    folder = os.path.abspath(which)
    sub, step_name = os.path.basename(os.path.dirname(folder)), os.path.basename(folder)
    if sub not in (ckpt_lib.LAST, ckpt_lib.BEST) or not step_name.isdigit():
      raise ValueError(f"config.eval.checkpoint={which!r}: expected auto|best|last or a folder "
                       f"<workdir>/checkpoints/<step> or <workdir>/best/<step>")
    other = ckpt_lib.Checkpointer(os.path.dirname(os.path.dirname(folder)), async_save=False)
    state, _ = other.restore(s.abstract, int(step_name), sub)
    other.close()
    source, step, params = folder, int(step_name), state.params
  if params is None:
    if which != "auto":
      raise FileNotFoundError(f"no {which} checkpoint in {workdir}")
    if not config.init.clip:
      raise FileNotFoundError(f"nothing to evaluate: no checkpoint in {checkpointer.directory(ckpt_lib.BEST)} or "
                              f"{checkpointer.directory()} and no --config.init.clip=PATH")
    state, _, _ = create_train_state(config, s.model, s.mesh, jax.random.PRNGKey(int(config.seed)),
                                     example_batch(config), steps_per_epoch=s.steps_per_epoch,
                                     clip_params=_clip_params(config))
    source, params = f"init.clip={config.init.clip}", state.params
  checkpointer.close()
  rows = _evaluate_splits(s, params, config.eval.splits, step, source)
  payload = _results_payload(s, rows)
  _report(workdir, payload)
  return payload
