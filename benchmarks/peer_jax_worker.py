"""tpsearch_jax side of ``benchmarks/peer_pytorch.py``: the project's train step at the same dimensions.

``python peer_jax_worker.py --method irra --dims JSON --mlm_head masked`` builds the method's config with the given
dimensions (attention heads = width / 64, as the reference's CLIP and cross-former), the trainer's jitted step
(``training.state``) and a fixed ``batch.fake_train_batch``, then answers ``RUN n`` lines with the wall time of n steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jaxlib

from tpsearch_jax import batch as batch_lib
from tpsearch_jax import sharding as shd
from tpsearch_jax.configs import base
from tpsearch_jax.models import build_model
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.config_checks import resolve_config
from tpsearch_jax.training.options import run_options


def peer_config(method: str, d: dict, mlm_head: str):
  """The method's base config at the dimensions ``d`` (float32, heads = width // 64)."""
  c = base.get_config(method)
  heads = lambda width: max(width // 64, 1)  # noqa: E731
  c.model.clip.update(dict(embed_dim=d["embed_dim"], patch_size=d["patch_size"], vision_width=d["vision_width"],
                           vision_layers=d["vision_layers"], vision_heads=heads(d["vision_width"]),
                           context_length=d["context_length"], vocab_size=d["vocab_size"], text_width=d["text_width"],
                           text_layers=d["text_layers"], text_heads=heads(d["text_width"])))
  c.data.image_size = tuple(d["image_size"])
  c.data.context_length = d["context_length"]
  c.model.cross_layers, c.model.cross_heads = d["cross_layers"], heads(d["embed_dim"])
  c.model.num_classes, c.model.dtype = d["num_classes"], "float32"
  c.train.batch_size, c.eval.batch_size = d["batch_size"], d["batch_size"]
  c.loss.mlm_head = mlm_head
  return resolve_config(c)


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--method", required=True)
  p.add_argument("--dims", required=True)
  p.add_argument("--mlm_head", default="masked")
  a = p.parse_args()
  d = json.loads(a.dims)
  t0 = time.perf_counter()
  config = peer_config(a.method, d, a.mlm_head)
  options = run_options(config)
  model, mesh = build_model(options), shd.create_mesh(jax.local_devices()[:1])
  state, tx, shardings = state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(0))
  step = state_lib.make_train_step(options.loss, model, tx, mesh, shardings)
  batch = shd.to_global(batch_lib.fake_train_batch(options.batch_options, d["batch_size"]), mesh)
  compiled = step.jitted.lower(state, batch).compile()
  state, metrics = compiled(state, batch)
  info = {"side": f"jax ({a.mlm_head} MLM head)", "setup_s": time.perf_counter() - t0,
          "first_loss": float(metrics["loss"]), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "params": sum(x.size for x in jax.tree.leaves(state.params))}
  print("READY " + json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "QUIT":
      break
    n = int(cmd[1])
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    print("TIME " + json.dumps({"ms_per_step": (time.perf_counter() - t) / n * 1e3,
                                "cpu_ms_per_step": (time.process_time() - cpu) / n * 1e3,
                                "loss": float(metrics["loss"])}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
