"""CLIP checkpoint layouts: HF ``CLIPModel`` and OpenAI ``.pt`` state-dict names, their shapes, and their architecture.

Both layouts are described as functions of a ``CLIPConfig`` so a checkpoint can be checked key by key (missing,
unexpected and mis-shaped tensors reported together) before any tensor is converted. OpenAI names are mapped to HF
names (in-projection split in thirds, projections transposed), so one HF → Flax table serves both.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from tpsearch_jax import user_errors
from tpsearch_jax.models.clip.model import CLIPConfig

HF_ANCHOR = "vision_model.embeddings.patch_embedding.weight"
OPENAI_ANCHOR = "visual.conv1.weight"
# Present in real checkpoints, not used by the model (IRRA/FMFA use a fixed logit scale).
UNUSED = {
    "hf": ("logit_scale", "vision_model.embeddings.position_ids", "text_model.embeddings.position_ids"),
    "openai": ("logit_scale", "input_resolution", "context_length", "vocab_size"),
}
# transformers' CLIPVisionConfig / CLIPTextConfig defaults, for fields a config.json leaves out.
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5)
_HF_PROJECTION_DIM = 512
log = logging.getLogger(__name__)


class CheckpointError(user_errors.UserError):
  """A checkpoint that is not a CLIP the model can hold; the message names the file and the offending keys."""


def detect_layout(keys: Iterable[str], source: str) -> str:
  """Returns "hf" or "openai" from the key names; a clear error for anything else."""
  keys = set(keys)
  if HF_ANCHOR in keys:
    return "hf"
  if OPENAI_ANCHOR in keys:
    if any(k.startswith("visual.layer1.") or k.startswith("visual.attnpool.") for k in keys):
      raise CheckpointError(f"{source}: a ResNet CLIP (visual.layer1/visual.attnpool); only ViT CLIPs are supported")
    return "openai"
  sample = ", ".join(sorted(keys)[:8]) or "(no tensors)"
  raise CheckpointError(f"{source}: not a CLIP checkpoint: it has neither '{HF_ANCHOR}' (HF CLIPModel) nor "
                        f"'{OPENAI_ANCHOR}' (OpenAI state dict); first keys: {sample}")


def _square_grid(positions: int, key: str, source: str) -> int:
  g = math.isqrt(max(positions - 1, 0))
  if positions < 2 or g * g != positions - 1:
    raise CheckpointError(f"{source}: '{key}' has {positions} rows, not CLS + a square patch grid")
  return g


def _heads(width: int, heads: int | None, tower: str, source: str) -> int:
  heads = width // 64 if heads is None else heads  # OpenAI's rule: 64-wide heads
  if heads <= 0 or width % heads:
    raise CheckpointError(f"{source}: {tower} width {width} cannot be split into {heads} heads; pass the head count "
                          f"explicitly ({tower}_heads=...)")
  return heads


def hf_architecture(config_json: Mapping, source: str) -> CLIPConfig:
  """The native architecture described by an HF CLIP ``config.json`` (dict)."""
  model_type = config_json.get("model_type", "clip")
  if model_type != "clip":
    raise CheckpointError(f"{source}: model_type is '{model_type}', expected 'clip'")
  vision = {**_HF_VISION_DEFAULTS, **(config_json.get("vision_config") or {}),
            **(config_json.get("vision_config_dict") or {})}
  text = {**_HF_TEXT_DEFAULTS, **(config_json.get("text_config") or {}), **(config_json.get("text_config_dict") or {})}
  for tower, c in (("vision_config", vision), ("text_config", text)):
    if c["hidden_act"] != "quick_gelu":
      raise CheckpointError(f"{source}: {tower}.hidden_act is '{c['hidden_act']}'; the model implements quick_gelu")
    if not math.isclose(c["layer_norm_eps"], 1e-5):
      raise CheckpointError(f"{source}: {tower}.layer_norm_eps is {c['layer_norm_eps']}; the model uses 1e-5")
    if not isinstance(c["intermediate_size"], int) or c["intermediate_size"] <= 0:
      raise CheckpointError(f"{source}: {tower}.intermediate_size {c['intermediate_size']!r} is not a positive int")
  eos = text.get("eos_token_id", 2)
  if eos not in (2, text["vocab_size"] - 1):  # 2: HF's legacy value, meaning "pool at the argmax id"
    log.warning("%s: text eos_token_id %s is not the largest id; the model pools text at the largest id (argmax), "
                "so the tokenizer must end captions with id %d", source, eos, text["vocab_size"] - 1)
  if vision["num_channels"] != 3:
    raise CheckpointError(f"{source}: vision_config.num_channels is {vision['num_channels']}, expected 3")
  size = vision["image_size"]
  size = (size, size) if isinstance(size, int) else tuple(size)
  patch = vision["patch_size"]
  if not isinstance(patch, int):
    if len(set(patch)) != 1:
      raise CheckpointError(f"{source}: vision_config.patch_size {patch} is not square")
    patch = patch[0]
  size = (size[0] // patch * patch, size[1] // patch * patch)  # HF floors the grid too
  return CLIPConfig(
      embed_dim=config_json.get("projection_dim", _HF_PROJECTION_DIM), image_size=size, patch_size=patch,
      vision_width=vision["hidden_size"], vision_layers=vision["num_hidden_layers"],
      vision_heads=_heads(vision["hidden_size"], vision["num_attention_heads"], "vision", source),
      vision_mlp_dim=vision["intermediate_size"], context_length=text["max_position_embeddings"],
      vocab_size=text["vocab_size"], text_width=text["hidden_size"], text_layers=text["num_hidden_layers"],
      text_heads=_heads(text["hidden_size"], text["num_attention_heads"], "text", source),
      text_mlp_dim=text["intermediate_size"])


def _require(state: Mapping[str, np.ndarray], key: str, ndim: int, source: str) -> tuple[int, ...]:
  if key not in state:
    raise CheckpointError(f"{source}: missing tensor '{key}'")
  shape = tuple(np.shape(state[key]))
  if len(shape) != ndim:
    raise CheckpointError(f"{source}: tensor '{key}' has shape {shape}, expected {ndim} dimensions")
  return shape


def _num_layers(keys: Iterable[str], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
  return max(found) + 1 if found else 0


def _mlp_dim(state: Mapping[str, np.ndarray], prefix: str, layers: int, source: str) -> int | None:
  """MLP hidden width from the first block's ``c_fc`` weight (hidden, width); None (4 x width) for an empty tower."""
  return _require(state, f"{prefix}0.mlp.c_fc.weight", 2, source)[0] if layers else None


def openai_architecture(state: Mapping[str, np.ndarray], source: str, vision_heads: int | None = None,
                        text_heads: int | None = None) -> CLIPConfig:
  """The native architecture of an OpenAI-layout state dict, from tensor shapes (heads: width // 64 unless given).

  The MLP widths come from each tower's first ``c_fc`` weight; every other block is checked against them later.
  """
  width, _, patch, patch_w = _require(state, "visual.conv1.weight", 4, source)
  if patch != patch_w:
    raise CheckpointError(f"{source}: 'visual.conv1.weight' has a non-square kernel {patch}x{patch_w}")
  grid = _square_grid(_require(state, "visual.positional_embedding", 2, source)[0], "visual.positional_embedding",
                      source)
  text_width, embed_dim = _require(state, "text_projection", 2, source)
  vocab, _ = _require(state, "token_embedding.weight", 2, source)
  context, _ = _require(state, "positional_embedding", 2, source)
  vision_layers = _num_layers(state, "visual.transformer.resblocks.")
  text_layers = _num_layers(state, "transformer.resblocks.")
  return CLIPConfig(
      embed_dim=embed_dim, image_size=(grid * patch, grid * patch), patch_size=patch, vision_width=width,
      vision_layers=vision_layers, vision_heads=_heads(width, vision_heads, "vision", source),
      vision_mlp_dim=_mlp_dim(state, "visual.transformer.resblocks.", vision_layers, source),
      context_length=context, vocab_size=vocab, text_width=text_width, text_layers=text_layers,
      text_heads=_heads(text_width, text_heads, "text", source),
      text_mlp_dim=_mlp_dim(state, "transformer.resblocks.", text_layers, source))


def _block_shapes(prefix: str, width: int, mlp: int, names: Mapping[str, str],
                  openai: bool) -> dict[str, tuple[int, ...]]:
  shapes = {}
  for ln in (names["ln_1"], names["ln_2"]):
    shapes[f"{prefix}{ln}.weight"] = shapes[f"{prefix}{ln}.bias"] = (width,)
  if openai:
    shapes[prefix + "attn.in_proj_weight"], shapes[prefix + "attn.in_proj_bias"] = (3 * width, width), (3 * width,)
  else:
    for n in "qkv":
      shapes[f"{prefix}self_attn.{n}_proj.weight"] = (width, width)
      shapes[f"{prefix}self_attn.{n}_proj.bias"] = (width,)
  shapes[f"{prefix}{names['out']}.weight"], shapes[f"{prefix}{names['out']}.bias"] = (width, width), (width,)
  shapes[f"{prefix}{names['fc1']}.weight"], shapes[f"{prefix}{names['fc1']}.bias"] = (mlp, width), (mlp,)
  shapes[f"{prefix}{names['fc2']}.weight"], shapes[f"{prefix}{names['fc2']}.bias"] = (width, mlp), (width,)
  return shapes


_HF_BLOCK = dict(ln_1="layer_norm1", ln_2="layer_norm2", out="self_attn.out_proj", fc1="mlp.fc1", fc2="mlp.fc2")
_OPENAI_BLOCK = dict(ln_1="ln_1", ln_2="ln_2", out="attn.out_proj", fc1="mlp.c_fc", fc2="mlp.c_proj")


def expected_shapes(layout: str, c: CLIPConfig) -> dict[str, tuple[int, ...]]:
  """Every tensor name of ``layout`` ("hf"|"openai") for the native architecture ``c`` → its torch shape."""
  gh, gw = c.grid
  w, t, e, p = c.vision_width, c.text_width, c.embed_dim, c.patch_size
  openai = layout == "openai"
  if openai:
    shapes = {"visual.conv1.weight": (w, 3, p, p), "visual.class_embedding": (w,),
              "visual.positional_embedding": (1 + gh * gw, w), "visual.proj": (w, e),
              "token_embedding.weight": (c.vocab_size, t), "positional_embedding": (c.context_length, t),
              "text_projection": (t, e)}
    norms = {"visual.ln_pre": w, "visual.ln_post": w, "ln_final": t}
    blocks = ("visual.transformer.resblocks.", "transformer.resblocks.")
  else:
    shapes = {HF_ANCHOR: (w, 3, p, p), "vision_model.embeddings.class_embedding": (w,),
              "vision_model.embeddings.position_embedding.weight": (1 + gh * gw, w), "visual_projection.weight": (e, w),
              "text_model.embeddings.token_embedding.weight": (c.vocab_size, t),
              "text_model.embeddings.position_embedding.weight": (c.context_length, t),
              "text_projection.weight": (e, t)}
    norms = {"vision_model.pre_layrnorm": w, "vision_model.post_layernorm": w, "text_model.final_layer_norm": t}
    blocks = ("vision_model.encoder.layers.", "text_model.encoder.layers.")
  for name, width in norms.items():
    shapes[name + ".weight"] = shapes[name + ".bias"] = (width,)
  for prefix, width, mlp, layers in ((blocks[0], w, c.vision_mlp_width, c.vision_layers),
                                     (blocks[1], t, c.text_mlp_width, c.text_layers)):
    for i in range(layers):
      shapes.update(_block_shapes(f"{prefix}{i}.", width, mlp, _OPENAI_BLOCK if openai else _HF_BLOCK, openai))
  return shapes


def check_state(state: Mapping[str, np.ndarray], layout: str, c: CLIPConfig, source: str) -> list[str]:
  """Raises listing every missing / unexpected / mis-shaped / non-float tensor; returns the unused keys present."""
  expected = expected_shapes(layout, c)
  unused = [k for k in UNUSED[layout] if k in state]
  missing = [k for k in expected if k not in state]
  extra = sorted(k for k in state if k not in expected and k not in unused)
  wrong = [f"'{k}' {tuple(np.shape(state[k]))} (expected {s})" for k, s in expected.items()
           if k in state and tuple(np.shape(state[k])) != s]
  not_float = [f"'{k}' ({np.asarray(state[k]).dtype})" for k in expected
               if k in state and not np.issubdtype(np.asarray(state[k]).dtype, np.floating)]
  problems = format_problems({"missing tensors": [f"'{k}'" for k in missing],
                              "unexpected tensors": [f"'{k}'" for k in extra], "wrong shapes": wrong,
                              "non-float tensors": not_float})
  if problems:
    raise CheckpointError(f"{source}: {layout} CLIP checkpoint does not match the architecture "
                          f"{architecture_summary(c)}; {problems}")
  return unused


def format_problems(groups: Mapping[str, list[str]], limit: int = 20) -> str:
  """{"missing": [...], ...} → "missing: a, b; wrong shapes: ..." (empty groups left out, long ones shortened)."""
  parts = []
  for label, items in groups.items():
    if items:
      more = f", ... ({len(items)} in all)" if len(items) > limit else ""
      parts.append(f"{label}: {', '.join(items[:limit])}{more}")
  return "; ".join(parts)


def architecture_summary(c: CLIPConfig) -> str:
  """A one-line description of a CLIPConfig's architecture, for messages."""
  return (f"ViT width {c.vision_width} x {c.vision_layers} layers / {c.vision_heads} heads / mlp "
          f"{c.vision_mlp_width}, patch {c.patch_size}, image {c.image_size[0]}x{c.image_size[1]}; text width "
          f"{c.text_width} x {c.text_layers} layers / {c.text_heads} heads / mlp {c.text_mlp_width}, context "
          f"{c.context_length}, vocab {c.vocab_size}; embed {c.embed_dim}")


def openai_to_hf(state: Mapping[str, np.ndarray], c: CLIPConfig) -> dict[str, np.ndarray]:
  """OpenAI-layout tensors (already checked) → HF names and layouts."""
  out = {
      HF_ANCHOR: state["visual.conv1.weight"],
      "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
      "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
      "visual_projection.weight": np.asarray(state["visual.proj"]).T,  # OpenAI computes x @ proj
      "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
      "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
      "text_projection.weight": np.asarray(state["text_projection"]).T,
  }
  for src, dst in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                   ("ln_final", "text_model.final_layer_norm")):
    out[dst + ".weight"], out[dst + ".bias"] = state[src + ".weight"], state[src + ".bias"]
  for src_prefix, dst_prefix, layers in (("visual.transformer.resblocks.", "vision_model.encoder.layers.",
                                          c.vision_layers),
                                         ("transformer.resblocks.", "text_model.encoder.layers.", c.text_layers)):
    for i in range(layers):
      src, dst = f"{src_prefix}{i}.", f"{dst_prefix}{i}."
      for part in ("weight", "bias"):
        q, k, v = np.split(np.asarray(state[f"{src}attn.in_proj_{part}"]), 3, axis=0)
        out[f"{dst}self_attn.q_proj.{part}"], out[f"{dst}self_attn.k_proj.{part}"] = q, k
        out[f"{dst}self_attn.v_proj.{part}"] = v
        for name in ("ln_1", "ln_2", "out", "fc1", "fc2"):
          out[f"{dst}{_HF_BLOCK[name]}.{part}"] = state[f"{src}{_OPENAI_BLOCK[name]}.{part}"]
  return out


def _f32(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


def _hf_block_to_flax(state: Mapping[str, np.ndarray], src: str, heads: int) -> dict:
  ln = lambda name: {"scale": _f32(state[f"{src}{name}.weight"]), "bias": _f32(state[f"{src}{name}.bias"])}
  attn = {}
  for n, flax_name in (("q", "query"), ("k", "key"), ("v", "value")):
    w = _f32(state[f"{src}self_attn.{n}_proj.weight"])  # (out, in); out splits as (heads, head_dim)
    attn[flax_name] = {"kernel": w.T.reshape(w.shape[1], heads, -1),
                       "bias": _f32(state[f"{src}self_attn.{n}_proj.bias"]).reshape(heads, -1)}
  w = _f32(state[f"{src}self_attn.out_proj.weight"])  # (out, in = heads * head_dim)
  attn["out"] = {"kernel": w.T.reshape(heads, -1, w.shape[0]), "bias": _f32(state[f"{src}self_attn.out_proj.bias"])}
  dense = lambda name: {"kernel": _f32(state[f"{src}{name}.weight"]).T, "bias": _f32(state[f"{src}{name}.bias"])}
  return {"ln_1": ln("layer_norm1"), "attn": attn, "ln_2": ln("layer_norm2"),
          "mlp": {"c_fc": dense("mlp.fc1"), "c_proj": dense("mlp.fc2")}}


def hf_to_flax(state: Mapping[str, np.ndarray], c: CLIPConfig) -> dict:
  """HF-layout tensors (already checked against ``c``) → the ``CLIP(c)`` param tree at the native grid, float32."""
  ln = lambda name: {"scale": _f32(state[name + ".weight"]), "bias": _f32(state[name + ".bias"])}
  v, t = "vision_model.", "text_model."
  visual = {
      "conv1": {"kernel": _f32(state[HF_ANCHOR]).transpose(2, 3, 1, 0)},  # OIHW → HWIO
      "class_embedding": _f32(state[v + "embeddings.class_embedding"]),
      "positional_embedding": _f32(state[v + "embeddings.position_embedding.weight"]),
      "ln_pre": ln(v + "pre_layrnorm"),
      "transformer": {f"resblocks_{i}": _hf_block_to_flax(state, f"{v}encoder.layers.{i}.", c.vision_heads)
                      for i in range(c.vision_layers)},
      "ln_post": ln(v + "post_layernorm"),
      "proj": _f32(state["visual_projection.weight"]).T,
  }
  text = {
      "token_embedding": {"embedding": _f32(state[t + "embeddings.token_embedding.weight"])},
      "positional_embedding": _f32(state[t + "embeddings.position_embedding.weight"]),
      "transformer": {f"resblocks_{i}": _hf_block_to_flax(state, f"{t}encoder.layers.{i}.", c.text_heads)
                      for i in range(c.text_layers)},
      "ln_final": ln(t + "final_layer_norm"),
      "text_projection": _f32(state["text_projection.weight"]).T,
  }
  return {"visual": visual, "text": text}


def architecture_fields(c: CLIPConfig) -> dict:
  """The architecture part of a CLIPConfig (no dtype / remat / attention_impl), JSON-ready; MLP widths resolved."""
  d = dataclasses.asdict(c)
  for k in ("dtype", "remat", "attention_impl"):
    d.pop(k)
  d["image_size"] = list(d["image_size"])
  d["vision_mlp_dim"], d["text_mlp_dim"] = c.vision_mlp_width, c.text_mlp_width  # None and 4 x width are one model
  return d
