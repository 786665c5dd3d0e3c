"""CLIP weight import: parity with transformers' CLIPModel (fixtures from tools/make_clip_fixture.py) and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tpsearch_jax.models import convert_weights as convert_cli
from tpsearch_jax.models.clip import (CheckpointError, CLIPConfig, check_params, convert_clip, convert_state_dict,
                                     load_clip, load_clip_params, resize_posemb)

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "hf_tiny_clip"
OPENAI_NPZ = FIXTURE / "openai_layout.npz"
MLP_FIXTURE = FIXTURE.with_name("hf_tiny_clip_mlp")  # same towers, MLP widths 72 (vision) and 40 (text)
TINY_HEADS = dict(vision_heads=4, text_heads=2)  # the tiny widths are not multiples of 64
ATOL = 1e-5


@pytest.fixture(scope="module")
def ref():
  with np.load(FIXTURE / "outputs.npz") as f:
    return {k: f[k] for k in f.files}


def _run(model, params, images=None, ids=None):
  """(img_tokens, img_pooled) or (txt_tokens, txt_pooled) as numpy."""
  if images is not None:
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_image"))(params, images)
  else:
    out = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode_text"))(params, ids)
  return tuple(np.asarray(o) for o in out)


def _assert_parity(model, params, ref, suffix=""):
  tokens, pooled = _run(model, params, images=ref["images" + suffix])
  np.testing.assert_allclose(tokens, ref["image_tokens" + suffix], atol=ATOL, rtol=0)
  np.testing.assert_allclose(pooled, ref["image_embeds" + suffix], atol=ATOL, rtol=0)
  if suffix:
    return
  tokens, pooled = _run(model, params, ids=ref["ids"])
  np.testing.assert_allclose(tokens, ref["text_tokens"], atol=ATOL, rtol=0)
  np.testing.assert_allclose(pooled, ref["text_embeds"], atol=ATOL, rtol=0)


def test_hf_folder_matches_transformers(ref, caplog):
  with caplog.at_level(logging.INFO, logger="tpsearch_jax.models.clip.weights"):
    model, params = load_clip(FIXTURE)
  c = model.config
  # Architecture comes from config.json: both towers differ on purpose.
  assert (c.vision_width, c.vision_layers, c.vision_heads, c.patch_size, c.image_size) == (32, 2, 4, 8, (32, 32))
  assert (c.text_width, c.text_layers, c.text_heads, c.context_length, c.vocab_size, c.embed_dim) == (
      16, 3, 2, 16, 256, 24)
  assert "logit_scale" in caplog.text  # dropped keys are reported, not silently skipped
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  _assert_parity(model, params, ref)


def test_openai_npz_matches_transformers(ref):
  model, params = load_clip(OPENAI_NPZ, **TINY_HEADS)  # float16 file, float32 params
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params))
  _assert_parity(model, params, ref)


def test_resampled_grid_matches_transformers_with_bilinear_table(ref):
  model, params = load_clip(FIXTURE, image_size=(48, 16))  # 4x4 grid -> 6x2
  assert model.config.grid == (6, 2)
  np.testing.assert_allclose(params["visual"]["positional_embedding"], ref["posemb_48x16"], atol=1e-6, rtol=0)
  _assert_parity(model, params, ref, suffix="_48x16")
  _, params_oa = load_clip(OPENAI_NPZ, image_size=(48, 16), **TINY_HEADS)
  np.testing.assert_allclose(params_oa["visual"]["positional_embedding"], ref["posemb_48x16"], atol=1e-6, rtol=0)


def _torch_bilinear_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """F.interpolate(mode="bilinear", align_corners=False, antialias=False) from its definition, float64. [H,W,C]."""

  def taps(n_in, n_out):
    result = []
    for dst in range(n_out):
      src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)  # half-pixel centres, negative coordinates clamp to 0
      i0 = min(int(np.floor(src)), n_in - 1)
      i1 = min(i0 + 1, n_in - 1)
      frac = src - i0
      result.append((i0, i1, 1.0 - frac, frac))
    return result

  img = img.astype(np.float64)
  out = np.zeros((out_h, out_w, img.shape[2]))
  for y, (y0, y1, wy0, wy1) in enumerate(taps(img.shape[0], out_h)):
    for x, (x0, x1, wx0, wx1) in enumerate(taps(img.shape[1], out_w)):
      out[y, x] = (wy0 * (wx0 * img[y0, x0] + wx1 * img[y0, x1]) + wy1 * (wx0 * img[y1, x0] + wx1 * img[y1, x1]))
  return out


def test_resize_posemb_matches_pytorch_bilinear(ref):
  rng = np.random.default_rng(0)
  table = rng.standard_normal((1 + 14 * 14, 6)).astype(np.float32)
  got = resize_posemb(table, (14, 14), (24, 8))
  want = _torch_bilinear_reference(table[1:].reshape(14, 14, 6), 24, 8).reshape(24 * 8, 6)
  np.testing.assert_array_equal(got[0], table[0])
  np.testing.assert_allclose(got[1:], want, atol=1e-5, rtol=0)
  # ... and against PyTorch itself (values written by the fixture script).
  np.testing.assert_allclose(resize_posemb(ref["grid14"], (14, 14), (24, 8)), ref["grid14_to_24x8"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(ref["grid14_to_24x8"][1:], _torch_bilinear_reference(
      ref["grid14"][1:].reshape(14, 14, 8), 24, 8).reshape(-1, 8), atol=1e-5, rtol=0)


def test_msgpack_round_trip_and_cli(tmp_path, ref):
  dst = tmp_path / "tiny_48x16.msgpack"
  assert convert_cli.main([f"--src={FIXTURE}", f"--dst={dst}", "--image_size=48,16"]) == 0
  model, params = load_clip(dst, dtype="bfloat16", remat=True)
  assert model.config.image_size == (48, 16) and model.config.remat and model.config.dtype == np.dtype("bfloat16")
  _, direct = load_clip(FIXTURE, image_size=(48, 16))
  jax.tree.map(np.testing.assert_array_equal, params, direct)
  with pytest.raises(CheckpointError, match="converted for images"):
    load_clip(dst, image_size=(32, 32))
  # the npz needs heads; the CLI reports the problem instead of a traceback
  assert convert_cli.main([f"--src={OPENAI_NPZ}", f"--dst={tmp_path / 'x.msgpack'}"]) == 2
  cfg = convert_clip(OPENAI_NPZ, tmp_path / "oa.msgpack", **TINY_HEADS)
  assert cfg.vision_heads == 4
  _assert_parity(*load_clip(tmp_path / "oa.msgpack"), ref)


def test_convert_state_dict_for_a_raw_openai_dict(ref):
  with np.load(OPENAI_NPZ) as f:
    state = {k: f[k] for k in f.files}
  cfg, params = convert_state_dict(state, (48, 16), **TINY_HEADS)
  assert cfg.image_size == (48, 16)
  np.testing.assert_allclose(params["visual"]["positional_embedding"], ref["posemb_48x16"], atol=1e-6, rtol=0)


def test_load_clip_params_checks_the_configured_architecture():
  model, _ = load_clip(FIXTURE)
  params = load_clip_params(FIXTURE, model.config)
  assert params["text"]["text_projection"].shape == (16, 24)
  other = CLIPConfig(**{**model.config.__dict__, "embed_dim": 32})
  with pytest.raises(CheckpointError, match="embed_dim: checkpoint 24 vs configured 32"):
    load_clip_params(FIXTURE, other)


def _broken_copy(tmp_path: pathlib.Path, edit) -> pathlib.Path:
  folder = tmp_path / "ckpt"
  folder.mkdir()
  shutil.copy(FIXTURE / "config.json", folder / "config.json")
  state = load_file(FIXTURE / "model.safetensors")
  edit(state)
  save_file(state, folder / "model.safetensors")
  return folder


def test_missing_key_is_named(tmp_path):
  key = "text_model.encoder.layers.2.mlp.fc2.bias"
  folder = _broken_copy(tmp_path, lambda s: s.pop(key))
  with pytest.raises(CheckpointError, match=r"missing tensors: '" + key.replace(".", r"\.")) as e:
    load_clip(folder)
  assert str(folder / "model.safetensors") in str(e.value)


def test_wrong_shape_is_named(tmp_path):
  key = "vision_model.encoder.layers.1.self_attn.k_proj.weight"

  def edit(s):
    s[key] = s[key][:, :31].copy()

  with pytest.raises(CheckpointError, match=rf"'{key}' \(32, 31\) \(expected \(32, 32\)\)") as e:
    load_clip(_broken_copy(tmp_path, edit))
  assert "model.safetensors" in str(e.value)


def test_config_disagreeing_with_tensors(tmp_path):
  folder = _broken_copy(tmp_path, lambda s: None)
  cfg = json.loads((folder / "config.json").read_text())
  cfg["vision_config"]["num_hidden_layers"] = 1
  (folder / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match=r"unexpected tensors: 'vision_model\.encoder\.layers\.1\."):
    load_clip(folder)


def test_non_clip_safetensors(tmp_path):
  path = tmp_path / "other.safetensors"
  save_file({"encoder.weight": np.zeros((2, 2), np.float32)}, path)
  with pytest.raises(CheckpointError, match=r"other\.safetensors: not a CLIP checkpoint.*encoder\.weight"):
    load_clip(path)
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x00not a safetensors file")
  with pytest.raises(CheckpointError, match=r"garbage\.safetensors: cannot read as safetensors"):
    load_clip(garbage)


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nope\.npz"):
    load_clip(tmp_path / "nope.npz")
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: folder has no model\.safetensors"):
    load_clip(tmp_path)
  lone = tmp_path / "lone"
  lone.mkdir()
  shutil.copy(FIXTURE / "model.safetensors", lone / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_clip(lone)


def test_check_params_lists_every_problem():
  model, params = load_clip(FIXTURE)
  params["visual"] = dict(params["visual"])
  del params["visual"]["ln_pre"]
  params["visual"]["proj"] = params["visual"]["proj"][:, :5]
  params["visual"]["extra"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError) as e:
    check_params(params, model.config, "tampered")
  msg = str(e.value)
  assert "missing: visual/ln_pre/bias, visual/ln_pre/scale" in msg
  assert "unexpected: visual/extra" in msg
  assert "visual/proj (32, 5) (expected (32, 24))" in msg


def test_non_4x_mlp_widths_come_from_the_checkpoint_and_match_transformers(tmp_path):
  with np.load(MLP_FIXTURE / "outputs.npz") as f:
    mlp_ref = {k: f[k] for k in f.files}
  model, params = load_clip(MLP_FIXTURE)  # HF: intermediate_size of vision_config / text_config
  assert (model.config.vision_mlp_width, model.config.text_mlp_width) == (72, 40)
  assert params["visual"]["transformer"]["resblocks_1"]["mlp"]["c_fc"]["kernel"].shape == (32, 72)
  _assert_parity(model, params, mlp_ref)
  oa_model, oa_params = load_clip(MLP_FIXTURE / "openai_layout.npz", **TINY_HEADS)  # OpenAI: c_fc weight shapes
  assert (oa_model.config.vision_mlp_dim, oa_model.config.text_mlp_dim) == (72, 40)
  _assert_parity(oa_model, oa_params, mlp_ref)
  convert_clip(MLP_FIXTURE, tmp_path / "mlp.msgpack")
  _assert_parity(*load_clip(tmp_path / "mlp.msgpack"), mlp_ref)
  # a model configured with the default 4 x width MLPs is told which field differs
  with pytest.raises(CheckpointError, match="vision_mlp_dim: checkpoint 72 vs configured 128"):
    load_clip_params(MLP_FIXTURE, dataclasses.replace(model.config, vision_mlp_dim=None, text_mlp_dim=None))


def test_an_openai_mlp_width_differing_between_blocks_is_named():
  """The OpenAI layout has no config: block 0's c_fc sets the width, every other block is checked against it."""
  with np.load(OPENAI_NPZ) as f:
    state = {k: f[k] for k in f.files}
  key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
  state[key] = state[key][:100]
  with pytest.raises(CheckpointError, match=rf"'{key}' \(100, 32\) \(expected \(128, 32\)\)"):
    convert_state_dict(state, **TINY_HEADS)


def test_default_mlp_width_config_accepts_a_4x_checkpoint():
  model, _ = load_clip(FIXTURE)
  assert (model.config.vision_mlp_width, model.config.text_mlp_width) == (128, 64)
  params = load_clip_params(FIXTURE, dataclasses.replace(model.config, vision_mlp_dim=None, text_mlp_dim=None))
  assert params["text"]["transformer"]["resblocks_0"]["mlp"]["c_fc"]["kernel"].shape == (16, 64)


def test_convert_command_runs_as_a_module(tmp_path):
  dst = tmp_path / "cli.msgpack"
  out = subprocess.run([sys.executable, "-m", "tpsearch_jax.models.convert_weights", f"--src={FIXTURE}",
                        f"--dst={dst}"], capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr
  assert "mlp 128" in out.stdout and dst.is_file()


def test_import_needs_neither_tensorflow_nor_torch():
  code = ("import sys, tpsearch_jax, tpsearch_jax.models.clip, tpsearch_jax.models.convert_weights; "
          "print(sorted(m for m in ('tensorflow', 'torch', 'transformers') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "[]"
