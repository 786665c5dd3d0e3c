"""The start-up image check: every image a run reads is fully decoded once, in parallel, before anything compiles.

A header check passes a truncated JPEG that then kills the run at its first batch; so each image is decoded in full
with PIL (``Image.load``; PIL and the pipeline's TF decode both use libjpeg, with the same accurate DCT). Files that
decoded are remembered in a small JSON cache keyed by (path, size, mtime), so a rerun pays only a ``stat`` per file.

The cache is ``data.check_cache``: "" (default) = ``<data.root>/.tpsearch_checked.json``, a directory (the file goes
inside it) or a file path, "off" = none. Where it cannot be written the check still runs, uncached (warned once).
Within a process the results are also kept in memory, so the annotation check and the pipelines' screens decode each
file once. Format: {"version": 1, "decoder": "Pillow <version>", "files": {path: fingerprint}}, the fingerprint
being [size, mtime_ns] for a file, ["crc32", length, crc] for bytes held in memory (TFDS records). No TensorFlow.

One skip rule (``skip_rule``): a missing image is skipped with data.skip_missing or data.skip_corrupt, an image that
does not decode with data.skip_corrupt; a skipped image drops every caption of it (train records, eval queries).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import IO, Any

import PIL
from PIL import Image

from tpsearch_jax.user_errors import UserError

log = logging.getLogger(__name__)

TF_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP")  # what the pipeline's TF decode reads (MPO: a JPEG)
CACHE_NAME = ".tpsearch_checked.json"
CACHE_VERSION = 1
NUM_CHECK_THREADS = 16
PROGRESS_SECONDS = 10.0
_LISTED = 10

Opener = Callable[[str], "str | IO[bytes] | None"]  # key -> something PIL opens, or None when the image is absent
Fingerprint = Callable[[str], "list | None"]  # key -> what identifies its current bytes, or None (not cacheable)


class ImageDecodeError(UserError):
  """An image file is missing, unreadable or not decodable; the message names the file(s), the split and the flag."""


@dataclasses.dataclass(frozen=True)
class ImageCheck:
  """Result of ``check_images``: how many distinct images were checked and the offenders as (key, reason)."""

  checked: int
  bad: list[tuple[str, str]]
  missing: frozenset[str] = frozenset()  # the keys of ``bad`` that are absent (the others do not decode)

  def kind(self, key: str) -> str:
    """"missing" or "corrupt" for a key of ``bad``."""
    return "missing" if key in self.missing else "corrupt"

  def message(self, limit: int = _LISTED) -> str:
    head = "; ".join(f"{p}: {r}" for p, r in self.bad[:limit])
    more = f" (and {len(self.bad) - limit} more)" if len(self.bad) > limit else ""
    return f"{len(self.bad)} of {self.checked} image files are missing or unreadable: {head}{more}"


class DecodeCache:
  """Keys whose bytes decoded, with their fingerprint; persisted to ``path`` (None: this process only)."""

  def __init__(self, path: str | None):
    self.path = path
    self.decoder = f"Pillow {PIL.__version__}"
    self._ok: dict[str, list] = self._read() if path else {}
    self._dirty = False
    self._lock = threading.Lock()

  def _read(self) -> dict[str, list]:
    try:
      with open(self.path, encoding="utf-8") as f:
        stored = json.load(f)
    except OSError:  # absent or unreadable: start empty (``save`` warns when it cannot write either)
      return {}
    except ValueError as e:
      log.warning("ignoring the image check cache %s (%s)", self.path, e)
      return {}
    if not isinstance(stored, dict) or (stored.get("version"), stored.get("decoder")) != (CACHE_VERSION,
                                                                                           self.decoder):
      return {}
    files = stored.get("files")
    return dict(files) if isinstance(files, dict) else {}

  def ok(self, key: str, fingerprint: list | None) -> bool:
    return fingerprint is not None and self._ok.get(key) == fingerprint

  def add(self, key: str, fingerprint: list | None) -> None:
    if fingerprint is not None:
      with self._lock:
        self._ok[key] = fingerprint
        self._dirty = True

  def save(self) -> None:
    """Writes the file (merged with what another process wrote meanwhile); unwritable → warns once, memory only."""
    if not (self.path and self._dirty):
      return
    merged = self._read() | self._ok
    tmp = f"{self.path}.{uuid.uuid4().hex[:12]}.tmp"  # unique across hosts sharing the folder
    try:
      os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
      with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": CACHE_VERSION, "decoder": self.decoder, "files": merged}, f, separators=(",", ":"))
      os.replace(tmp, self.path)
    except OSError as e:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      log.warning("cannot write the image check cache %s (%s); images are decoded again next run (set "
                  "--config.data.check_cache to a writable folder, or =off)", self.path, e)
      self.path = None
      return
    self._ok, self._dirty = merged, False


_CACHES: dict[str | None, DecodeCache] = {}


def cache_path(config_data: Any) -> str | None:
  """The cache file of ``data.check_cache`` ("" → <data.root>/.tpsearch_checked.json; a directory; a file; "off")."""
  setting = str(getattr(config_data, "check_cache", "") or "")
  if setting.lower() in ("off", "none", "false"):
    return None
  if not setting:
    root = str(getattr(config_data, "root", "") or "")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), CACHE_NAME) if root else None
  path = os.path.abspath(os.path.expanduser(setting))
  return os.path.join(path, CACHE_NAME) if os.path.isdir(path) or setting.endswith(os.sep) else path


def cache_for(config_data: Any) -> DecodeCache:
  """The process-wide ``DecodeCache`` of ``config_data`` (one object per cache file)."""
  path = cache_path(config_data)
  if path not in _CACHES:
    _CACHES[path] = DecodeCache(path)
  return _CACHES[path]


def file_fingerprint(path: str) -> list | None:
  """[size, mtime_ns] of a file, None when absent."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [st.st_size, st.st_mtime_ns]


def bytes_fingerprint(data: bytes) -> list:
  """["crc32", length, crc] of encoded bytes held in memory."""
  return ["crc32", len(data), zlib.crc32(data)]


def decode_problem(source: str | IO[bytes]) -> str | None:
  """Why the image at ``source`` (path or binary file) does not fully decode as a format TF reads, or None."""
  try:
    with Image.open(source) as im:
      if im.format not in TF_FORMATS:
        return f"format {im.format} is not one of {', '.join(TF_FORMATS)}"
      im.load()
  except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files; all mean "unreadable"
    return f"{type(e).__name__}: {e}"
  return None


class _Progress:
  """A log line every PROGRESS_SECONDS while a check runs (thread-safe)."""

  def __init__(self, what: str, total: int):
    self.what, self.total, self.done = what, total, 0
    self.start = self.last = time.perf_counter()
    self._lock = threading.Lock()

  def step(self) -> None:
    with self._lock:
      self.done += 1
      now = time.perf_counter()
      if now - self.last >= PROGRESS_SECONDS and self.done < self.total:
        self.last, rate = now, self.done / (now - self.start)
        log.info("%s: decoded %d / %d images (%.0f/s, about %.0f s left)", self.what, self.done, self.total, rate,
                 (self.total - self.done) / rate)


def check_images(keys: Sequence[str], open_image: Opener, *, fingerprint: Fingerprint | None = None,
                 cache: DecodeCache | None = None, missing: str = "missing", what: str = "images",
                 num_threads: int = NUM_CHECK_THREADS) -> ImageCheck:
  """Fully decodes each distinct key of keys [N] not already in ``cache`` (same fingerprint), in a thread pool.

  ``open_image(key)`` gives what PIL opens, None for an absent image (reason ``missing``). Progress is logged.
  """
  unique = list(dict.fromkeys(keys))
  fingerprints = {k: fingerprint(k) if fingerprint else None for k in unique}
  todo = [k for k in unique if not (cache and cache.ok(k, fingerprints[k]))]
  start, progress = time.perf_counter(), _Progress(what, len(todo))

  def one(key: str) -> str | None:
    source = open_image(key)
    reason = missing if source is None else decode_problem(source)
    if reason is None and cache is not None:
      cache.add(key, fingerprints[key])
    progress.step()
    return reason

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    reasons = dict(zip(todo, pool.map(one, todo)))
  if cache is not None:
    cache.save()
  bad = [(k, reasons[k]) for k in todo if reasons[k] is not None]
  log.info("%s: %d image files ok (%d decoded in %.1f s, %d unchanged since an earlier check%s)", what,
           len(unique) - len(bad), len(todo), time.perf_counter() - start, len(unique) - len(todo),
           f"; cache {cache.path}" if cache is not None and cache.path else "")
  return ImageCheck(len(unique), bad, frozenset(k for k, r in bad if r == missing))


def skip_rule(result: ImageCheck, config_data: Any, what: str) -> dict[str, str]:
  """The offenders of ``result`` the flags allow skipping, as {key: "missing" | "corrupt"}; raises otherwise.

  Missing: data.skip_missing or data.skip_corrupt; not decodable: data.skip_corrupt. The error names ``what`` (the
  split), the files and the exact flag to set.
  """
  skip_corrupt = bool(getattr(config_data, "skip_corrupt", False))
  skip_missing = skip_corrupt or bool(getattr(config_data, "skip_missing", False))
  refused = [(k, r) for k, r in result.bad if not (skip_corrupt or (skip_missing and k in result.missing))]
  if refused:
    flag = "skip_missing" if all(k in result.missing for k, _ in refused) else "skip_corrupt"
    shown = ImageCheck(result.checked, refused, result.missing)
    raise ImageDecodeError(f"{what}: {shown.message()}. Fix or remove the files, or set --config.data.{flag}=True "
                           "to skip them with their captions (counted and logged).")
  return {k: result.kind(k) for k, _ in result.bad}


def count_kinds(dropped: dict[str, str]) -> dict[str, int]:
  """{key: kind} → {"missing": n, "corrupt": m}."""
  kinds = list(dropped.values())
  return {"missing": kinds.count("missing"), "corrupt": kinds.count("corrupt")}


def add_counts(*counts: dict[str, int] | None) -> dict[str, int]:
  """Sums skip counts {"missing", "corrupt", "captions_dropped"} (absent entries count 0)."""
  return {k: sum(int((c or {}).get(k, 0)) for c in counts) for k in ("missing", "corrupt", "captions_dropped")}
