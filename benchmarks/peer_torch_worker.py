"""PyTorch side of ``benchmarks/peer_pytorch.py``: the reference training step (IRRA or FMFA code) at given dimensions.

Run by the driver with the torch interpreter: ``python peer_torch_worker.py --src DIR --method irra --dims JSON``.
It builds the reference model from the reference checkout with a randomly initialised CLIP of the given dimensions
(the reference's loader only reads OpenAI checkpoints), in float32, with the reference optimizer
(``solver.build.build_optimizer``: Adam with its parameter groups), then answers ``RUN n`` lines on stdin with the
wall time of n steps (forward, the sum of the returned losses, backward, optimizer step), as JSON on stdout.

Two float32 adaptations, both without changing the computation: the model is not converted to fp16
(``convert_weights`` is for GPUs), and the classifier's fp16 cast of its input is undone so it matches its float32
weights. No network, no data files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

SOT, EOT, MASK = 49406, 49407, 49405
LOSSES = {"irra": "sdm+id+mlm", "fmfa": "a-sdm+id+mlm+efa"}


def fake_batch(d: dict, seed: int = 0) -> dict:
  """The same recipe as tpsearch_jax.batch.fake_train_batch: random captions, 15 % masking, random pids."""
  rng = np.random.default_rng(seed)
  b, length = d["batch_size"], d["context_length"]
  ids = np.zeros((b, length), np.int64)
  for i, n in enumerate(rng.integers(min(8, length - 1), length, size=b)):
    ids[i, 0], ids[i, 1:n], ids[i, n] = SOT, rng.integers(1, MASK, size=n - 1), EOT
  chosen = (ids > 0) & (ids < MASK) & (rng.random(ids.shape) < 0.15)
  h, w = d["image_size"]
  return {"images": torch.from_numpy(rng.standard_normal((b, 3, h, w), dtype=np.float32)),
          "caption_ids": torch.from_numpy(ids), "mlm_ids": torch.from_numpy(np.where(chosen, MASK, ids)),
          "mlm_labels": torch.from_numpy(np.where(chosen, ids, 0)),
          "pids": torch.from_numpy(rng.integers(0, d["num_classes"], size=b))}


def build(src: str, method: str, d: dict):
  sys.path.insert(0, src)
  sys.argv = [sys.argv[0]]
  from model import clip_model  # pylint: disable=import-outside-toplevel  (the reference checkout, found at run time)
  from solver.build import build_optimizer  # pylint: disable=import-outside-toplevel
  from utils.options import get_args  # pylint: disable=import-outside-toplevel
  if method == "fmfa":
    from model import build_finetune as build_module  # pylint: disable=import-outside-toplevel  (FMFA's train step)
  else:
    from model import build as build_module  # pylint: disable=import-outside-toplevel

  def random_clip(name, image_size, stride_size, **unused):
    del name, unused
    model = clip_model.CLIP(d["embed_dim"], tuple(image_size), d["vision_layers"], d["vision_width"], d["patch_size"],
                            stride_size, d["context_length"], d["vocab_size"], d["text_width"],
                            max(d["text_width"] // 64, 1), d["text_layers"])
    return model, {"embed_dim": d["embed_dim"]}

  build_module.build_CLIP_from_openai_pretrained = random_clip
  args = get_args()
  args.loss_names, args.img_size, args.stride_size = LOSSES[method], tuple(d["image_size"]), d["patch_size"]
  args.cmt_depth, args.vocab_size, args.text_length = d["cross_layers"], d["vocab_size"], d["context_length"]
  model = build_module.IRRA(args, num_classes=d["num_classes"]).float()
  if hasattr(model, "classifier"):
    linear = model.classifier
    linear.forward = lambda x: torch.nn.functional.linear(x.float(), linear.weight, linear.bias)
  model.train()
  return model, build_optimizer(args, model)


def main() -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--src", required=True)
  p.add_argument("--method", choices=sorted(LOSSES), required=True)
  p.add_argument("--dims", required=True, help="JSON of the dimensions (see peer_pytorch.py)")
  p.add_argument("--threads", type=int, default=0)
  a = p.parse_args()
  d = json.loads(a.dims)
  if a.threads:
    torch.set_num_threads(a.threads)
  t0 = time.perf_counter()
  model, optimizer = build(a.src, a.method, d)
  batch = fake_batch(d)

  def step():
    ret = model(batch)
    total = sum(v for k, v in ret.items() if "loss" in k)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return float(total.detach())

  loss = step()
  info = {"side": "pytorch", "setup_s": time.perf_counter() - t0, "first_loss": loss, "torch": torch.__version__,
          "threads": torch.get_num_threads(), "params": sum(x.numel() for x in model.parameters())}
  print("READY " + json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "QUIT":
      break
    n = int(cmd[1])
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
      loss = step()
    print("TIME " + json.dumps({"ms_per_step": (time.perf_counter() - t) / n * 1e3,
                                "cpu_ms_per_step": (time.process_time() - cpu) / n * 1e3, "loss": loss}), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
