"""Converts a pretrained CLIP checkpoint once into Flax params for a given image size.

  python -m tpsearch_jax.models.clip.convert --src=PATH --dst=FILE.msgpack --image_size=384,128

(``python -m tpsearch_jax.checkpoints.convert`` runs the same command.)

PATH: an HF folder (model.safetensors + config.json) or an OpenAI-layout .npz. The output loads with
``load_clip(FILE.msgpack)`` or ``--config.init.clip=FILE.msgpack``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tpsearch_jax.models.clip.layouts import CheckpointError, architecture_summary
from tpsearch_jax.models.clip.weights import convert_checkpoint


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected H,W (e.g. 384,128), got {text!r}") from e
  return h, w


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the process exit code."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="HF folder / .safetensors / OpenAI-layout .npz")
  parser.add_argument("--dst", required=True, help="output .msgpack")
  parser.add_argument("--image_size", type=_size, default=None, help="H,W; default: the checkpoint's own")
  parser.add_argument("--vision_heads", type=int, default=None, help="OpenAI layout only; default width // 64")
  parser.add_argument("--text_heads", type=int, default=None, help="OpenAI layout only; default width // 64")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    config = convert_checkpoint(args.src, args.dst, args.image_size, vision_heads=args.vision_heads,
                                text_heads=args.text_heads)
  except (CheckpointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.dst}: {architecture_summary(config)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
