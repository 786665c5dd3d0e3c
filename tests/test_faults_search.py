"""Search and convert faults: an index pins the checkpoint that built it (a moved run is
found with --workdir, anything else is refused in one line), any file name round-trips, empty queries and bad k are
refused before any model work, and both CLIs report user errors in one line with exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import jax
import numpy as np
import pytest
import safetensors.numpy
from absl import flags
from PIL import Image
from test_search import tiny_config

from tpsearch_jax import user_errors
from tpsearch_jax.models import build_model
from tpsearch_jax.models import convert_weights as convert_cli
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.params_io import save_params
from tpsearch_jax.search import cli, encoding, index_files, indexing
from tpsearch_jax.search.index_files import BadIndex
from tpsearch_jax.search.fingerprint import FingerprintMismatch
from tpsearch_jax.search.searcher import Searcher, query
from tpsearch_jax.search import server as search_server
from tpsearch_jax.search.server import SearchServer
from tpsearch_jax import sharding as shd
from tpsearch_jax.training import checkpointing
from tpsearch_jax.training import runs
from tpsearch_jax.training import state as state_lib
from tpsearch_jax.training.options import run_options

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
CLIP_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "hf_tiny_clip")
FLAGS = flags.FLAGS
QUERY = ["a man in a red shirt"]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


@pytest.fixture(scope="module")
def states():
  """{seed: train state} of the tiny CLIP model: two different sets of weights for the same config."""
  config = tiny_config()
  options = run_options(config)
  model, mesh = build_model(options), shd.create_mesh()
  return {seed: state_lib.create_train_state(options, model, mesh, jax.random.PRNGKey(seed))[0]
          for seed in (3, 11)}


def save(workdir, state, step: int, which: str = checkpointing.LAST) -> None:
  ckpt = checkpointing.Checkpointer(str(workdir), async_save=False)
  ckpt.save(step, state, {"step": step}, which)
  ckpt.close()


def write_images(gallery, names, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  for name in names:
    os.makedirs(gallery / os.path.dirname(name), exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(gallery / name)


@pytest.fixture(scope="module")
def built(tmp_path_factory, states):
  """A run (config.json + checkpoints/7), a gallery of 5 images and its index (tests change copies of them)."""
  base = tmp_path_factory.mktemp("pinned")
  run, gallery = base / "run", base / "gallery"
  run.mkdir()
  (run / "config.json").write_text(tiny_config().to_json_best_effort(indent=2))
  save(run, states[3], 7)
  names = ["cam0/000.png", "cam0/001.jpg", "cam1/002.png", "cam1/003.png", "cam1/004.jpg"]
  write_images(gallery, names)
  index = base / "index"
  meta = indexing.build(str(run), str(gallery), str(index), batch_size=8)
  return {"base": base, "meta": meta, "gallery": str(gallery), "names": names,
          "results": query(str(index), QUERY, k=5)}


@pytest.fixture
def copy(built, tmp_path):
  """A private copy of the run and its index (the index.json's run folder rewritten to the copy)."""
  run, index = tmp_path / "run", tmp_path / "index"
  shutil.copytree(built["base"] / "run", run)
  shutil.copytree(built["base"] / "index", index)
  meta = json.loads((index / "index.json").read_text())
  meta["workdir"] = str(run)
  (index / "index.json").write_text(json.dumps(meta))
  return run, index


def one_line(e) -> str:
  text = str(e.value if hasattr(e, "value") else e)
  assert "\n" not in text.strip(), text
  return text


# ------------------------------------------------------------------------------------------- 1: the index pins its run


def test_index_records_fingerprint_and_checksums(built):
  meta = built["meta"]
  assert meta["format_version"] == 3
  assert meta["fingerprint"] == {"config_sha256": meta["fingerprint"]["config_sha256"],
                                 "checkpoint": "checkpoints/7", "step": 7, "dim": 16}
  assert set(meta["sha256"]) == {"embeddings.npy", "paths.json", "stats.npy"}


def test_query_loads_the_recorded_checkpoint_not_the_newest(copy, states):
  run, index = copy
  want = query(str(index), QUERY, k=5)
  # Same config, same step, other weights in best/ (auto prefers best/): yesterday's query silently used them.
  save(run, states[11], 7, checkpointing.BEST)
  save(run, states[11], 9)  # and the run trained further
  s = Searcher(str(index), warm=False)
  assert (s.run.step, os.path.relpath(s.run.checkpoint, run)) == (7, os.path.join("checkpoints", "7"))
  assert query(str(index), QUERY, k=5) == want


def test_moved_run_is_found_with_workdir(copy):
  run, index = copy
  want = query(str(index), QUERY, k=5)
  moved = run.with_name("moved_run")
  os.rename(run, moved)
  with pytest.raises(FingerprintMismatch, match="if it moved, pass --workdir") as e:
    query(str(index), QUERY, k=5)
  one_line(e)
  assert query(str(index), QUERY, k=5, workdir=str(moved)) == want
  with pytest.raises(FingerprintMismatch, match=r"--workdir=\S+ has no config.json"):
    query(str(index), QUERY, k=5, workdir=str(moved / "checkpoints"))


def test_cli_query_uses_workdir_of_a_moved_run(copy, capsys):
  run, index = copy
  moved = run.with_name("moved_run")
  os.rename(run, moved)
  try:
    FLAGS(["search", f"--index={index}", "--text=a man", "--k=2", f"--workdir={moved}"])
    assert cli.main(["search", "query"]) == 0
  finally:
    FLAGS.unparse_flags()
  out = capsys.readouterr().out
  assert "a man" in out and len([line for line in out.splitlines() if line.startswith("    ")]) == 2
  try:
    FLAGS(["search", f"--index={index}", "--text=a man", "--k=2"])
    assert cli.main(["search", "query"]) == 2
  finally:
    FLAGS.unparse_flags()
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and err.startswith("python -m tpsearch_jax.search: error: the run that built") \
      and "pass --workdir=" in err


def rewrite_index(index, embeddings=None, **fingerprint):
  """Rewrites embeddings.npy (and the fingerprint fields given) with consistent checksums: a valid-looking index."""
  meta = json.loads((index / "index.json").read_text())
  if embeddings is not None:
    np.save(index / "embeddings.npy", embeddings)
  meta["fingerprint"].update(fingerprint)
  meta["sha256"] = {n: index_files.file_sha256(str(index / n)) for n in meta["sha256"]}
  (index / "index.json").write_text(json.dumps(meta))


def edit_config(run):
  config = json.loads((run / "config.json").read_text())
  config["train"]["log_every_steps"] = 123
  (run / "config.json").write_text(json.dumps(config))


def drop_step_7(run, states):
  save(run, states[3], 9)
  shutil.rmtree(run / "checkpoints" / "7")


def damage_step_7(run, states):
  for folder, _, files in os.walk(run / "checkpoints" / "7" / "state"):
    for name in files:
      if os.path.basename(folder) == "d":  # the tensor data files of orbax's OCDBT store
        with open(os.path.join(folder, name), "r+b") as f:
          f.truncate(8)


def widen(index, states):
  emb = np.load(index / "embeddings.npy")
  rewrite_index(index, np.concatenate([emb, emb[:, :1]], axis=1), dim=17)


def flip_a_byte(index, states):
  data = bytearray((index / "embeddings.npy").read_bytes())
  data[-3] ^= 0x40
  (index / "embeddings.npy").write_bytes(bytes(data))


def format_2(index, states):
  meta = json.loads((index / "index.json").read_text())
  meta["format_version"] = 2
  (index / "index.json").write_text(json.dumps(meta))


REFUSALS = {
    "config": (lambda run, index, states: edit_config(run), r"built with config [0-9a-f]{16} .*: pass --workdir="
               r".* or rebuild the index: python -m tpsearch_jax.search index --workdir="),
    "step_missing": (lambda run, index, states: drop_step_7(run, states),
                     r"checkpoint checkpoints/7 \(step 7\), which .* no longer has \(it has: checkpoints/9\): "
                     r"rebuild the index: python -m tpsearch_jax.search index"),
    "checkpoint_damaged": (lambda run, index, states: damage_step_7(run, states),
                           r"needs exactly \S+/checkpoints/7: .*; or rebuild the index: python -m"),
    "dimension": (lambda run, index, states: widen(index, states), r"vectors of width 16, but .* records step 7 and "
                  r"width 17: rebuild the index"),
    "checksum": (lambda run, index, states: flip_a_byte(index, states),
                 r"embeddings.npy is not the file index.json records \(sha256 differs.*rebuild the index: python -m"),
    "older_format": (lambda run, index, states: format_2(index, states),
                     r"an index of format 2; this version reads format 3 only .*rebuild it: python -m "
                     r"tpsearch_jax.search index --workdir=\S+ --images=\S+ --index=\S+$"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_mismatch_is_refused_in_one_line_saying_how_to_fix(copy, states, case):
  run, index = copy
  damage, message = REFUSALS[case]
  damage(run, index, states)
  with pytest.raises(user_errors.UserError, match=message) as e:
    Searcher(str(index), warm=False)
  assert isinstance(e.value, (FingerprintMismatch, BadIndex)) and isinstance(e.value, ValueError)
  one_line(e)


def test_index_over_an_older_or_damaged_index_rebuilds_it(copy, built):
  run, index = copy
  format_2(index, None)
  (index / "paths.txt").write_text("stale\n")
  meta = indexing.build(str(run), built["gallery"], str(index), batch_size=8)
  assert meta["num_encoded"] == len(built["names"]) and not (index / "paths.txt").exists()
  flip_a_byte(index, None)
  assert indexing.build(str(run), built["gallery"], str(index), batch_size=8)["num_encoded"] == len(built["names"])
  assert indexing.build(str(run), built["gallery"], str(index), batch_size=8)["num_encoded"] == 0


# ------------------------------------------------------------------------------------ 2: any file name round-trips


def test_file_name_with_a_newline_round_trips(built, tmp_path):
  gallery, index = tmp_path / "gallery", str(tmp_path / "index")
  names = ["cam0/000.png", "cam1/new\nline.png", "cam1/tab\tand ünïcode.png", "cam1/z.png"]
  write_images(gallery, names)
  workdir = built["meta"]["workdir"]
  assert indexing.build(workdir, str(gallery), index, batch_size=8)["num_images"] == 4
  paths = index_files.read_index(index)["paths"]
  assert paths == sorted(str(gallery / n) for n in names) and str(gallery / "cam1/new\nline.png") in paths
  assert sorted(p for p, _ in query(index, QUERY, k=4)[0]) == paths  # every image, the newline one too
  again = indexing.build(workdir, str(gallery), index, batch_size=8)
  assert again["num_encoded"] == 0 and again["num_images"] == 4


# ---------------------------------------------------------------- 3: empty queries and bad k, before any model work


@pytest.fixture
def no_model(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr(runs, "load_run", refuse)


@pytest.mark.parametrize("sentences,k,message", [
    ([""], 3, "query 1 is empty"), (["a man", " \t\n"], 3, "query 2 is empty"), (["a man"], 0, "k must be"),
    (["a man"], -2, "k must be")])
def test_empty_query_or_bad_k_is_refused_before_the_model_loads(built, no_model, sentences, k, message):
  with pytest.raises(user_errors.UserError, match=message) as e:
    query(str(built["base"] / "index"), sentences, k=k)
  one_line(e)


@pytest.mark.parametrize("args,message", [
    (["--text="], "--text number 1 is empty"), (["--text=   "], "--text number 1 is empty"),
    (["--text=a man", "--k=0"], "--k must be at least 1, got 0"), (["--text=a man", "--k=-4"], "--k must be")])
def test_cli_refuses_empty_text_and_bad_k_in_one_line(built, no_model, capsys, args, message):
  try:
    FLAGS(["search", f"--index={built['base'] / 'index'}", *args])
    assert cli.main(["search", "query"]) == 2
  finally:
    FLAGS.unparse_flags()
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and message in err and err.startswith("python -m tpsearch_jax.search: error: ")


def test_server_answers_400_to_a_blank_query(built):
  server = SearchServer(Searcher(str(built["base"] / "index"), warm=False), port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    for q in ("", "%20%20%09", "%E3%80%80"):  # empty, spaces + tab, an ideographic space
      with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{server.url}api/search?q={q}&k=3", timeout=30)
      assert e.value.code == 400 and "empty query" in json.loads(e.value.read())["error"]
  finally:
    server.shutdown()
    server.server_close()


# ------------------------------------------------------------------------------ 4: one-line errors of both CLIs


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_search_cli_process_exits_2_with_one_line(built):
  index = str(built["base"] / "index")
  for args, message in ((["query", f"--index={index}", "--text="], "--text number 1 is empty"),
                        (["serch", f"--index={index}"], 'did you mean "serve"'),
                        (["query", f"--index={index}", "--k=many"], "--k")):
    out = run_cli("tpsearch_jax.search", *args)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
  out = run_cli("tpsearch_jax.search", "query", f"--index={index}", "--text=", "--verbose")
  assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr


def garbage(tmp_path, name: str) -> str:
  path = tmp_path / name
  path.write_bytes(b"\x00\x01 certainly not a checkpoint " * 7)
  return str(path)


def nan_folder(tmp_path) -> str:
  folder = tmp_path / "nan_clip"
  shutil.copytree(CLIP_FIXTURE, folder)
  state = safetensors.numpy.load_file(folder / "model.safetensors")
  name = "vision_model.encoder.layers.0.mlp.fc1.weight"
  state[name] = state[name].copy()
  state[name][0, :3] = [np.nan, np.inf, np.nan]
  safetensors.numpy.save_file(state, folder / "model.safetensors")
  return str(folder)


@pytest.mark.parametrize("case", ["msgpack", "safetensors", "npz", "missing", "size_zero", "size_not_multiple",
                                  "size_text", "nan"])
def test_convert_errors_are_one_line_with_exit_status_2(tmp_path, capsys, case):
  src, size, message = CLIP_FIXTURE, None, None
  if case in ("msgpack", "safetensors", "npz"):
    src, message = garbage(tmp_path, f"junk.{case}"), "junk." + case
  elif case == "missing":
    src, message = str(tmp_path / "nowhere"), "not found"
  elif case == "size_zero":
    size, message = "0,128", "--image_size: expected two positive sizes"
  elif case == "size_not_multiple":
    size, message = "50,17", "is not two positive multiples of the checkpoint's patch size"
  elif case == "size_text":
    size, message = "big", "--image_size: expected H,W"
  else:
    src, message = nan_folder(tmp_path), ("tensor 'vision_model.encoder.layers.0.mlp.fc1.weight' has 2 NaN and 1 "
                                          "Inf values")
  dst = tmp_path / "out.msgpack"
  args = [f"--src={src}", f"--dst={dst}"] + ([f"--image_size={size}"] if size else [])
  try:
    assert convert_cli.main(args) == 2
  except SystemExit as e:  # argparse's own errors
    assert e.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("python -m tpsearch_jax.models.convert_weights: error: ") and "\n" not in err, err
  assert message in err and not dst.exists()


def test_save_params_refuses_non_finite_tensors(tmp_path):
  params = {"visual": {"proj": np.ones((2, 2), np.float32)}, "text": {"w": np.array([1.0, np.inf], np.float32)}}
  with pytest.raises(CheckpointError, match=r"refusing to write .*tensor 'text/w' has 0 NaN and 1 Inf values of 2"):
    save_params(params, tmp_path / "x.msgpack")
  assert not (tmp_path / "x.msgpack").exists()


def test_convert_process_exits_2_with_one_line(tmp_path):
  out = run_cli("tpsearch_jax.models.convert_weights", f"--src={garbage(tmp_path, 'junk.msgpack')}",
                f"--dst={tmp_path / 'out.msgpack'}")
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1 and "junk.msgpack: not a msgpack params file" in lines[0], out.stderr
  assert issubclass(CheckpointError, user_errors.UserError) and issubclass(CheckpointError, ValueError)


# ------------------------------------------------------------------- 5: every bad file at once; a busy port first


def test_index_lists_every_bad_file_before_encoding_anything(built, tmp_path, monkeypatch):
  gallery = tmp_path / "gallery"
  shutil.copytree(built["gallery"], gallery)
  bad = {"cam0/truncated.png": b"\x89PNG\r\n\x1a\n garbage", "cam1/text.jpg": b"not an image at all",
         "empty.png": b""}
  for name, data in bad.items():
    (gallery / name).write_bytes(data)

  def refuse(*args, **kwargs):
    raise AssertionError("an image was encoded before every file was checked")
  monkeypatch.setattr(encoding, "image_encoder", refuse)
  with pytest.raises(encoding.BadImages) as e:
    indexing.build(str(built["base"] / "run"), str(gallery), str(tmp_path / "index"), batch_size=8)
  text = str(e.value)
  assert text.startswith(f"3 of {len(built['names']) + 3} image files cannot be read")
  listed = [line.strip().split(": ", 1) for line in text.splitlines() if line.startswith("  ")]
  assert sorted(p for p, _ in listed) == sorted(str(gallery / n) for n in bad)
  assert all(reason for _, reason in listed) and "--skip_bad" in text
  assert not (tmp_path / "index").exists()


def test_serve_refuses_a_busy_port_before_loading_the_model(built, no_model):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with pytest.raises(user_errors.UserError, match=f"cannot listen on --host=127.0.0.1 --port={port}") as e:
      search_server.serve(str(built["base"] / "index"), "127.0.0.1", port)  # no_model: loading would raise AssertionError
  one_line(e)
