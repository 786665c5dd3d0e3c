"""Writes tests/fixtures/hf_tiny_{bert,vit,resnet}: tiny random transformers models and their outputs for fixed inputs.

Needs torch + transformers (any CPU build); the project itself never imports torch. Run from the repository root:

    python tools/make_backbone_fixtures.py --out_dir tests/fixtures [--only hf_tiny_bert]

Every parameter is random (LayerNorm / BatchNorm affine and running statistics included), so a mapping that drops,
transposes or swaps a tensor fails the parity tests. Files in each folder: ``config.json`` + ``model.safetensors``
(``save_pretrained``, float32), ``outputs.npz`` (inputs and reference activations) and ``versions.json``.

  hf_tiny_bert    BertModel (width 32, 2 layers, 4 heads, MLP 48, 40 positions) + vocab.txt (caption words of
                  synthetic_pedes and the test fixtures, letters and ##-pieces) + tokenizer_config.json;
                  outputs: ids from transformers' BertTokenizer (padding / truncation at 12), a token-type row,
                  last_hidden_state and pooler_output. The same vocab.txt is written to
                  tpsearch_jax/models/bert/tiny_vocab.txt, the tokenizer of BERT towers trained from scratch
                  on synthetic_pedes (configs/synthetic.py).
  hf_tiny_vit     ViTModel (width 32, 2 layers, 4 heads, MLP 40, 32x32 images, patch 8) at its native size, and a
                  second copy built for 48x16 inputs whose position table is the PyTorch bilinear resize (half-pixel
                  centres, no antialias) of the native one: the reference for ``load_vit(image_size=(48, 16))``.
  hf_tiny_resnet  ResNetModel (bottleneck, stem 8, widths 16/24/32, depths 1/2/1) on 64x32 images, last stride 2
                  (HF as is) and last stride 1 (the last stage's strided convolutions set to stride 1 in torch).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

import numpy as np
import torch
import torch.nn.functional as F
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
BERT_CONTEXT = 12
SENTENCES = ["A woman in a red shirt and blue jeans.", "The man wears black SHOES",
             "a person carrying a white backpack, walking with an umbrella and wearing a long grey coat"]
VIT_IMAGE, VIT_PATCH, VIT_RESIZED = 32, 8, (48, 16)
RESNET_IMAGE = (64, 32)


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Every parameter and BatchNorm buffer random: norms' scale ~ 1, biases ~ 0.2, weights ~ 1/√fan_in."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1 and ("norm" in name.lower() or "layernorm" in name.lower()):
        p.copy_(1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
      elif p.ndim == 1 or "token" in name or "position_embeddings" in name:
        p.copy_(0.2 * noise if p.ndim == 1 else 0.5 * noise)
      else:
        p.copy_(noise / np.sqrt(np.prod(p.shape[1:])))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.3 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def caption_words() -> list[str]:
  """Lower-case words of the synthetic caption grammar and of tests/dataset_fixtures.py, plus the sentences'."""
  text = " ".join(re.findall(r'"([^"]*)"', (ROOT / "tpsearch_jax/data/synthetic/captions.py").read_text()))
  text += " " + " ".join(re.findall(r'"captions": \[([^\]]*)\]', (ROOT / "tests/dataset_fixtures.py").read_text()))
  text += " " + " ".join(SENTENCES)
  return sorted(set(re.findall(r"[a-z0-9]+", text.lower())))


def write_vocab(out: pathlib.Path) -> int:
  """vocab.txt: [PAD] first (id 0), specials, punctuation, caption words, single characters and their ## pieces."""
  chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,;:!?'\"-()/&")
  tokens += [w for w in caption_words() if w not in chars] + chars + ["##" + c for c in chars]
  (out / "vocab.txt").write_text("\n".join(tokens) + "\n")
  (ROOT / "tpsearch_jax/models/bert/tiny_vocab.txt").write_text("\n".join(tokens) + "\n")
  (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}, indent=1) + "\n")
  return len(tokens)


@torch.no_grad()
def bert_fixture(out: pathlib.Path) -> dict[str, np.ndarray]:
  vocab = write_vocab(out)
  config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=48, max_position_embeddings=40, type_vocab_size=2)
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = transformers.BertModel(config).eval()
  randomize(model, 1)
  model.save_pretrained(out, safe_serialization=True)
  tok = transformers.BertTokenizer(vocab=str(out / "vocab.txt"), do_lower_case=True)
  enc = tok(SENTENCES, padding="max_length", truncation=True, max_length=BERT_CONTEXT, return_tensors="pt")
  types = torch.zeros_like(enc["input_ids"])
  types[1, 3:] = 1  # one row with a second segment, so token_type_embeddings is exercised
  res = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=types)
  return {"sentences": np.array(SENTENCES), "input_ids": enc["input_ids"].numpy().astype(np.int32),
          "attention_mask": enc["attention_mask"].numpy().astype(np.int32), "token_type_ids": types.numpy().astype(
              np.int32), "last_hidden_state": res.last_hidden_state.numpy(), "pooler_output": res.pooler_output.numpy()}


def bilinear_resize(table: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
  """[1, 1 + sh*sw, D] → [1, 1 + dh*dw, D]: CLS kept, the grid resized (bilinear, half-pixel centres, no antialias)."""
  cls, rest = table[:, :1], table[:, 1:]
  img = rest.reshape(1, *src, -1).permute(0, 3, 1, 2)
  img = F.interpolate(img, size=dst, mode="bilinear", align_corners=False, antialias=False)
  return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], -1)], dim=1)


@torch.no_grad()
def vit_fixture(out: pathlib.Path) -> dict[str, np.ndarray]:
  kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, patch_size=VIT_PATCH)
  config = transformers.ViTConfig(image_size=VIT_IMAGE, **kwargs)
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = transformers.ViTModel(config).eval()
  randomize(model, 2)
  model.save_pretrained(out, safe_serialization=True)
  rng = np.random.default_rng(3)
  pixels = torch.from_numpy(rng.standard_normal((2, 3, VIT_IMAGE, VIT_IMAGE)).astype(np.float32))
  res = {"images": pixels.permute(0, 2, 3, 1).numpy(), "last_hidden_state": model(pixels).last_hidden_state.numpy()}
  # The same weights built for 48x16 inputs, with the bilinear-resized position table (the TBPS convention).
  wide_config = transformers.ViTConfig(image_size=list(VIT_RESIZED), **kwargs)
  wide_config._attn_implementation = "eager"
  wide = transformers.ViTModel(wide_config).eval()
  state = dict(model.state_dict())
  g = VIT_IMAGE // VIT_PATCH
  state["embeddings.position_embeddings"] = bilinear_resize(state["embeddings.position_embeddings"], (g, g),
                                                            (VIT_RESIZED[0] // VIT_PATCH, VIT_RESIZED[1] // VIT_PATCH))
  wide.load_state_dict(state)
  pixels = torch.from_numpy(rng.standard_normal((2, 3, *VIT_RESIZED)).astype(np.float32))
  res["images_48x16"] = pixels.permute(0, 2, 3, 1).numpy()
  res["last_hidden_state_48x16"] = wide(pixels).last_hidden_state.numpy()
  return res


@torch.no_grad()
def resnet_fixture(out: pathlib.Path) -> dict[str, np.ndarray]:
  config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 24, 32], depths=[1, 2, 1],
                                     layer_type="bottleneck")
  torch.manual_seed(0)
  model = transformers.ResNetModel(config).eval()
  randomize(model, 4)
  model.save_pretrained(out, safe_serialization=True)
  rng = np.random.default_rng(5)
  pixels = torch.from_numpy(rng.standard_normal((2, 3, *RESNET_IMAGE)).astype(np.float32))
  res = {"images": pixels.permute(0, 2, 3, 1).numpy(),
         "last_hidden_state": model(pixels).last_hidden_state.permute(0, 2, 3, 1).numpy()}
  first = model.encoder.stages[-1].layers[0]  # last stride 1: the strided 3x3 and the shortcut of the last stage
  first.layer[1].convolution.stride = (1, 1)
  first.shortcut.convolution.stride = (1, 1)
  res["last_hidden_state_stride1"] = model(pixels).last_hidden_state.permute(0, 2, 3, 1).numpy()
  return res


FIXTURES = {"hf_tiny_bert": bert_fixture, "hf_tiny_vit": vit_fixture, "hf_tiny_resnet": resnet_fixture}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default="tests/fixtures")
  parser.add_argument("--only", choices=sorted(FIXTURES), default=None, help="write one fixture folder")
  args = parser.parse_args()
  for name, build in FIXTURES.items():
    if args.only not in (None, name):
      continue
    out = pathlib.Path(args.out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "outputs.npz", **build(out))
    meta = {"torch": torch.__version__, "transformers": transformers.__version__}
    (out / "versions.json").write_text(json.dumps(meta, indent=1) + "\n")
    for f in sorted(out.iterdir()):
      print(f"{f}  {f.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
  main()
