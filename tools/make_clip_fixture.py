"""Writes tests/fixtures/hf_tiny_clip*: tiny random ``transformers.CLIPModel``s and their outputs for fixed inputs.

Needs torch + transformers (any CPU build); the project itself never imports torch. Run from the repository root:

    python tools/make_clip_fixture.py --out_dir tests/fixtures [--only hf_tiny_clip_mlp]

Models (``FIXTURES``): ``hf_tiny_clip`` with the usual 4 x width MLPs, and ``hf_tiny_clip_mlp``, the same towers
with MLP hidden widths that are not 4 x width (and differ between the towers), so that a loader assuming 4 x width,
or taking one tower's MLP width for the other's, fails. Files written in each folder:
  config.json, model.safetensors   HF layout (``save_pretrained``), float32.
  openai_layout.npz                the same weights under OpenAI ``.pt`` state-dict names, float16 as OpenAI ships
                                   them (weights are rounded to float16 first, so both files hold identical values).
  outputs.npz                      reference activations, see ``reference_outputs`` (hf_tiny_clip_mlp: the
                                   native-resolution image and text outputs only).

The towers deliberately differ (widths, layers, heads, projection dim) so that a loader that mixes up which
dimension comes from where fails. Every parameter (LayerNorm scales and all biases included) is random.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np
import torch
import torch.nn.functional as F
import transformers

VOCAB = 256
EOT = VOCAB - 1  # the largest id, as in OpenAI's vocabulary, so argmax and first-EOS pooling agree
SOT = VOCAB - 2
CONTEXT = 16
IMAGE = 32
PATCH = 8
RESIZED = (48, 16)  # non-square, non-native resolution: grid 4x4 -> 6x2 (up in height, down in width)


# folder name -> MLP hidden widths (text width 16, vision width 32)
FIXTURES = {"hf_tiny_clip": dict(text_mlp=64, vision_mlp=128, resized=True),
            "hf_tiny_clip_mlp": dict(text_mlp=40, vision_mlp=72, resized=False)}


def build_model(text_mlp: int = 64, vision_mlp: int = 128) -> transformers.CLIPModel:
  """A random CLIPModel with the given MLP hidden widths; weights rounded to float16-representable values."""
  text = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=text_mlp, num_hidden_layers=3, num_attention_heads=2,
              max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5,
              bos_token_id=SOT, eos_token_id=EOT, pad_token_id=0)
  vision = dict(hidden_size=32, intermediate_size=vision_mlp, num_hidden_layers=2, num_attention_heads=4,
                image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5)
  config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
  config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if name == "logit_scale":
        continue
      if p.ndim == 1 and "norm" in name:  # LayerNorm: scale ~ 1, bias ~ 0
        value = 1.0 + 0.2 * noise if name.endswith("weight") else 0.2 * noise
      elif p.ndim == 1:  # linear biases, class embedding
        value = 0.2 * noise
      elif "embedding.weight" in name and "patch" not in name:  # token / position tables
        value = 0.5 * noise
      else:  # Linear (out, in) and Conv (out, in, kh, kw)
        value = noise / np.sqrt(np.prod(p.shape[1:]))
      p.copy_(value.half().float())
  return model


def hf_to_openai(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF CLIPModel state dict -> OpenAI ``.pt`` state-dict names and layouts (the inverse of HF's converter)."""
  out = {}
  renames = {
      "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
      "vision_model.embeddings.class_embedding": "visual.class_embedding",
      "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
      "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
      "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
      "vision_model.post_layernorm.weight": "visual.ln_post.weight",
      "vision_model.post_layernorm.bias": "visual.ln_post.bias",
      "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
      "text_model.embeddings.position_embedding.weight": "positional_embedding",
      "text_model.final_layer_norm.weight": "ln_final.weight",
      "text_model.final_layer_norm.bias": "ln_final.bias",
      "logit_scale": "logit_scale",
  }
  for hf, oa in renames.items():
    out[oa] = state[hf]
  out["visual.proj"] = state["visual_projection.weight"].T  # OpenAI stores x @ proj, input-major
  out["text_projection"] = state["text_projection.weight"].T
  for tower, prefix in (("vision_model", "visual.transformer"), ("text_model", "transformer")):
    i = 0
    while f"{tower}.encoder.layers.{i}.layer_norm1.weight" in state:
      src, dst = f"{tower}.encoder.layers.{i}.", f"{prefix}.resblocks.{i}."
      for part in ("weight", "bias"):
        out[dst + f"attn.in_proj_{part}"] = np.concatenate(
            [state[src + f"self_attn.{n}_proj.{part}"] for n in ("q", "k", "v")], axis=0)
        out[dst + f"attn.out_proj.{part}"] = state[src + f"self_attn.out_proj.{part}"]
        out[dst + f"ln_1.{part}"] = state[src + f"layer_norm1.{part}"]
        out[dst + f"ln_2.{part}"] = state[src + f"layer_norm2.{part}"]
        out[dst + f"mlp.c_fc.{part}"] = state[src + f"mlp.fc1.{part}"]
        out[dst + f"mlp.c_proj.{part}"] = state[src + f"mlp.fc2.{part}"]
      i += 1
  out["input_resolution"] = np.array(IMAGE)  # the OpenAI .pt carries these three ints too
  out["context_length"] = np.array(CONTEXT)
  out["vocab_size"] = np.array(VOCAB)
  return out


def bilinear_resize(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
  """[1 + g*g, D] -> [1 + gh*gw, D]: CLS row kept, the rest resized like IRRA (bilinear, half-pixel, no antialias)."""
  cls, rest = table[:1], table[1:]
  g = int(round(rest.shape[0] ** 0.5))
  img = rest.reshape(1, g, g, -1).permute(0, 3, 1, 2)
  img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False, antialias=False)
  return torch.cat([cls, img.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)], dim=0)


def token_ids(rng: np.random.Generator) -> np.ndarray:
  """Three zero-padded rows [SOT, words..., EOT, 0...]: short, empty, and full-length (EOT in the last slot)."""
  ids = np.zeros((3, CONTEXT), np.int64)
  for row, words in enumerate((5, 0, CONTEXT - 2)):
    ids[row, 0] = SOT
    ids[row, 1:1 + words] = rng.integers(1, SOT, size=words)
    ids[row, 1 + words] = EOT
  return ids


@torch.no_grad()
def vision_outputs(model, pixels: torch.Tensor, posemb: torch.Tensor | None = None):
  """(all tokens after post_layernorm + visual_projection [B, 1+N, E], HF pooled image features [B, E])."""
  vm = model.vision_model
  if posemb is not None:  # HF's own resize is bicubic; substitute the references' bilinear table
    vm.embeddings.interpolate_pos_encoding = lambda embeddings, height, width: posemb[None]
  out = vm(pixel_values=pixels, interpolate_pos_encoding=posemb is not None)
  tokens = model.visual_projection(vm.post_layernorm(out.last_hidden_state))
  pooled = model.visual_projection(out.pooler_output)
  return tokens.numpy(), pooled.numpy()


def text_outputs(model, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(all tokens after final_layer_norm + text_projection [B, L, E], HF pooled text features [B, E])."""
  with torch.no_grad():
    out = model.text_model(input_ids=torch.from_numpy(ids))  # last_hidden_state already has final_layer_norm
    return model.text_projection(out.last_hidden_state).numpy(), model.text_projection(out.pooler_output).numpy()


@torch.no_grad()
def reference_outputs(model, resized: bool = True) -> dict[str, np.ndarray]:
  """Fixed inputs (NHWC images, ids) and HF's activations for them; ``resized``: also the 48x16 and grid checks."""
  rng = np.random.default_rng(2)
  res = {}
  pixels = torch.from_numpy(rng.standard_normal((2, 3, IMAGE, IMAGE)).astype(np.float32))
  res["images"] = pixels.permute(0, 2, 3, 1).numpy()
  res["image_tokens"], res["image_embeds"] = vision_outputs(model, pixels)
  if not resized:
    res["ids"] = token_ids(rng).astype(np.int32)
    res["text_tokens"], res["text_embeds"] = text_outputs(model, res["ids"].astype(np.int64))
    return res

  pixels = torch.from_numpy(rng.standard_normal((2, 3, *RESIZED)).astype(np.float32))
  posemb = bilinear_resize(model.vision_model.embeddings.position_embedding.weight, (RESIZED[0] // PATCH,
                                                                                     RESIZED[1] // PATCH))
  res["images_48x16"] = pixels.permute(0, 2, 3, 1).numpy()
  res["posemb_48x16"] = posemb.numpy()
  res["image_tokens_48x16"], res["image_embeds_48x16"] = vision_outputs(model, pixels, posemb)

  ids = token_ids(rng)
  res["ids"] = ids.astype(np.int32)
  res["text_tokens"], res["text_embeds"] = text_outputs(model, ids)

  # A B/16-shaped grid (14x14 + CLS) resized to 24x8 by PyTorch itself, narrow width to stay small.
  grid = torch.from_numpy(rng.standard_normal((1 + 14 * 14, 8)).astype(np.float32))
  res["grid14"] = grid.numpy()
  res["grid14_to_24x8"] = bilinear_resize(grid, (24, 8)).numpy()
  return res


def write_fixture(out: pathlib.Path, text_mlp: int, vision_mlp: int, resized: bool) -> None:
  """One fixture folder: HF files, the OpenAI-layout npz, outputs.npz and versions.json."""
  out.mkdir(parents=True, exist_ok=True)
  model = build_model(text_mlp, vision_mlp)
  model.save_pretrained(out, safe_serialization=True)
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  np.savez(out / "openai_layout.npz", **{k: v.astype(np.float16) if v.dtype == np.float32 else v
                                         for k, v in hf_to_openai(state).items()})
  np.savez(out / "outputs.npz", **reference_outputs(model, resized))
  meta = {"torch": torch.__version__, "transformers": transformers.__version__}
  (out / "versions.json").write_text(json.dumps(meta, indent=1) + "\n")
  for f in sorted(out.iterdir()):
    print(f"{f}  {f.stat().st_size / 1024:.1f} KiB")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out_dir", default="tests/fixtures")
  parser.add_argument("--only", choices=sorted(FIXTURES), default=None, help="write one fixture folder")
  args = parser.parse_args()
  for name, spec in FIXTURES.items():
    if args.only in (None, name):
      write_fixture(pathlib.Path(args.out_dir) / name, **spec)


if __name__ == "__main__":
  main()
