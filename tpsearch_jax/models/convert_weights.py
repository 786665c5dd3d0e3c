"""Converts pretrained weights (CLIP, BERT, ImageNet ViT or ResNet) once into Flax params for a given image size.

  python -m tpsearch_jax.models.convert_weights --src=PATH --dst=FILE.msgpack --image_size=384,128

PATH: an HF folder (model.safetensors + config.json) or an OpenAI-layout .npz (CLIP). The kind comes from
config.json's model_type ("clip", "bert", "vit", "resnet"), or ``--kind``. The output loads with ``load_clip`` /
``load_bert`` / ``load_vit`` / ``load_resnet50`` (FILE.msgpack) or ``--config.init.clip`` / ``bert`` / ``vit`` /
``resnet=FILE.msgpack``. BERT and ResNet weights do not depend on the image size (``--image_size`` is ignored).

A source that cannot be converted (missing, not a checkpoint, an image size the patch grid cannot hold, NaN/Inf
tensors) ends with one line on stderr naming it and exit status 2; ``--verbose`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib

from tpsearch_jax import user_errors
from tpsearch_jax.models.bert.weights import convert_bert
from tpsearch_jax.models.clip.layouts import architecture_summary
from tpsearch_jax.models.clip.weights import convert_clip
from tpsearch_jax.models.resnet.weights import convert_resnet
from tpsearch_jax.models.vit.weights import convert_vit

KINDS = ("clip", "bert", "vit", "resnet")
PROGRAM = "python -m tpsearch_jax.models.convert_weights"


class _Parser(argparse.ArgumentParser):
  """argparse with a bad argument reported in one line (exit status 2) instead of the usage block."""

  def error(self, message):
    self.exit(2, f"{PROGRAM}: error: {message} (--help lists the arguments)\n")


def _size(text: str) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"expected H,W (e.g. 384,128), got {text!r}") from e
  if h < 1 or w < 1:
    raise argparse.ArgumentTypeError(f"expected two positive sizes H,W (e.g. 384,128), got {text!r}")
  return h, w


def detect_kind(src: str) -> str:
  """config.json's model_type beside / inside ``src`` when it is a BERT, ViT or ResNet; "clip" otherwise."""
  path = pathlib.Path(src)
  config = (path if path.is_dir() else path.parent) / "config.json"
  try:
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
    model_type = None
  return model_type if model_type in KINDS[1:] else "clip"


def convert(kind: str, src: str, dst: str, image_size, vision_heads=None, text_heads=None) -> str:
  """Converts ``src`` of ``kind`` into ``dst``; returns the architecture summary."""
  if kind == "clip":
    return architecture_summary(convert_clip(src, dst, image_size, vision_heads=vision_heads, text_heads=text_heads))
  if kind == "vit":
    return convert_vit(src, dst, image_size)
  return convert_bert(src, dst) if kind == "bert" else convert_resnet(src, dst)


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; returns the process exit code."""
  parser = _Parser(prog=PROGRAM, description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="HF folder / .safetensors / OpenAI-layout .npz")
  parser.add_argument("--kind", choices=KINDS, default=None, help="default: config.json's model_type, else clip")
  parser.add_argument("--dst", required=True, help="output .msgpack")
  parser.add_argument("--image_size", type=_size, default=None, help="H,W; default: the checkpoint's own")
  parser.add_argument("--vision_heads", type=int, default=None, help="OpenAI layout only; default width // 64")
  parser.add_argument("--text_heads", type=int, default=None, help="OpenAI layout only; default width // 64")
  parser.add_argument("--verbose", action="store_true", help="show the traceback of an error")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

  def body() -> int:
    kind = args.kind or detect_kind(args.src)
    summary = convert(kind, args.src, args.dst, args.image_size, args.vision_heads, args.text_heads)
    print(f"wrote {args.dst}: {summary}")
    return 0

  return user_errors.exit_on_user_error(body, program=PROGRAM, verbose=args.verbose)


if __name__ == "__main__":
  user_errors.exit_process(main())
