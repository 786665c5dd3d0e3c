"""The train state and the jitted train step — the TF-free training library used by the trainer, search and benchmark.

``abstract_train_state`` gives the state's shapes and shardings without allocating; ``create_train_state``
initialises it on a mesh (optionally with pretrained CLIP weights); ``make_train_step`` returns the jitted
``(state, global batch) → (state, metrics)`` with the state donated. The step applies the model, then
``objectives.compute_losses``. They take the run's ``training.options.Options`` (or the part of it they need), not
the config.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tpsearch_jax import batch as batch_lib
from tpsearch_jax import objectives
from tpsearch_jax import sharding as shd
from tpsearch_jax.objectives import LossOptions
from tpsearch_jax.training import checkpointing as ckpt_lib
from tpsearch_jax.training import optim
from tpsearch_jax.training.options import Options

INIT_BATCH_SIZE = 2  # parameter shapes do not depend on the batch size


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: step int32 [], params (f32), optimizer state, base PRNG key uint32 [2]."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def _init_fn(model, batch):
  def init(rng):
    return model.init({"params": rng}, batch, train=True)["params"]
  return init


def _init_batch(options: Options, example_batch: Mapping[str, np.ndarray] | None) -> dict[str, jax.Array]:
  if example_batch is None:
    example_batch = batch_lib.fake_train_batch(options.batch_options, INIT_BATCH_SIZE)
  return {k: jnp.asarray(v) for k, v in example_batch.items()}


def abstract_train_state(options: Options, model, mesh, example_batch: Mapping[str, np.ndarray] | None = None, *,
                         steps_per_epoch: int = 1):
  """(abstract TrainState of ShapeDtypeStructs with shardings, tx, state shardings) — nothing allocated.

  The optimizer is ``options.optim`` / ``options.schedule``'s. Params and optimizer state are FSDP-sharded over the
  mesh's "fsdp" axis when it has several devices (arrays of at least ``options.fsdp_min_size`` elements), else
  replicated (``sharding.tree_shardings``)."""
  tx = optim.create_optimizer(options.optim, options.schedule, steps_per_epoch)
  rng = jax.random.PRNGKey(0)
  params = jax.eval_shape(_init_fn(model, _init_batch(options, example_batch)), rng)
  opt_state = jax.eval_shape(tx.init, params)
  fsdp, min_size = options.fsdp, options.fsdp_min_size
  rep = shd.replicated(mesh)
  shardings = TrainState(step=rep, params=shd.tree_shardings(mesh, params, fsdp, min_size),
                         opt_state=shd.tree_shardings(mesh, opt_state, fsdp, min_size), rng=rep)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt_state,
                        rng=jax.ShapeDtypeStruct(rng.shape, rng.dtype))
  return ckpt_lib.abstract_with_shardings(abstract, shardings), tx, shardings


def create_train_state(options: Options, model, mesh, rng: jax.Array,
                       example_batch: Mapping[str, np.ndarray] | None = None, *, steps_per_epoch: int = 1,
                       clip_params: Mapping | None = None, pretrained: Mapping[str, Any] | None = None):
  """Initialised TrainState on ``mesh`` → (state, tx, state shardings) (optimizer and sharding as
  ``abstract_train_state``).

  rng: PRNGKey uint32 [2] (params, then the per-step keys fold in the step). example_batch: any batch of the batch
  contract's shapes (default: ``batch.fake_train_batch``). clip_params: pretrained ``params["clip"]`` subtree (numpy)
  to replace the random one. pretrained: {top-level param name: numpy subtree} replacing those subtrees (the paper
  backbones' ``image_backbone`` / ``text_backbone``).
  """
  abstract, tx, shardings = abstract_train_state(options, model, mesh, example_batch, steps_per_epoch=steps_per_epoch)
  k_init, k_state = jax.random.split(rng)
  params = jax.jit(_init_fn(model, _init_batch(options, example_batch)), out_shardings=shardings.params)(k_init)
  pretrained = dict(pretrained or {})
  if clip_params is not None:
    pretrained["clip"] = clip_params
  if pretrained:
    params = dict(params)
    for key, tree in pretrained.items():
      params[key] = place_like(tree, abstract.params[key], shardings.params[key], f"pretrained {key}")
  opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
  state = TrainState(step=step, params=params, opt_state=opt_state, rng=jax.device_put(k_state, shardings.rng))
  return state, tx, shardings


def place_like(tree, abstract, shardings, what: str = "params"):
  """Numpy tree → jax.Arrays with ``shardings``; raises naming any leaf whose path, shape or dtype differs."""
  want = {jax.tree_util.keystr(p): a for p, a in jax.tree_util.tree_leaves_with_path(abstract)}
  have = {jax.tree_util.keystr(p): np.asarray(a) for p, a in jax.tree_util.tree_leaves_with_path(tree)}
  problems = sorted(set(want) ^ set(have))
  problems += [f"{k}: {have[k].shape} vs {want[k].shape}" for k in sorted(set(want) & set(have))
               if have[k].shape != want[k].shape]
  if problems:
    raise ValueError(f"{what} params do not fit the model: " + "; ".join(problems[:20]))
  return jax.tree.map(lambda a, x, s: jax.device_put(np.asarray(x, a.dtype), s), abstract, tree, shardings)


def make_train_step(loss_options: LossOptions, model, tx, mesh, state_sharding) -> Callable:
  """jit((state, global batch) → (state, metrics)) with the state donated; the losses are ``loss_options``'.

  metrics: {"loss", each loss term and accuracy, "grad_norm", "param_norm", "finite"}, all replicated scalars;
  "finite" (bool) is whether every term, the gradient norm and the updated parameters' norm are finite, i.e.
  whether the returned state may be saved. The batch may be process-local numpy (converted here) or global
  jax.Arrays.
  """
  batch_sh = shd.batch_sharding(mesh)

  def step_fn(state: TrainState, batch):
    k_mining, _ = jax.random.split(jax.random.fold_in(state.rng, state.step))
    loss_fn = functools.partial(objectives.model_loss, model, loss_options, batch=batch, rng=k_mining)
    (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in terms.items()}
    metrics.update(loss=total, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
    metrics["finite"] = jnp.all(jnp.isfinite(jnp.stack(list(metrics.values()))))
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
