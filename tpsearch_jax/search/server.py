"""``python -m tpsearch_jax.search serve --index=INDEX``: a local search page over an index (standard library only).

Routes (GET):
  /                     the page (``page.PAGE``)
  /api/search?q=&k=&long=  {"query", "k", "long", "took_ms", "grid", "read", "tokens", "context_length", "dropped",
                        "dropped_from", "sentences", "phrases": [{"text", "start", "end"}], "results": [{"rank",
                        "path" (relative to the indexed folder), "score", "url", "thumb_url", "overlay_url" (part
                        models), "occlusion_url", "explanation" (+ "phrases": each phrase's score drop)}]};
                        long = truncate (default) | mean | max (``searcher``); a bad request → 400 {"error": "…"}
  /api/info             the index: images, root, method, step, limits
  /image/<row>          the image file of index row <row>; /thumb/<row> a JPEG ≤ 256 px high;
  /overlay/<row>.png    its foreground map + stripes (part models)
  /occlusion/<row>.png?q=&long=  the occlusion map of the query over that image (one batched forward)
Anything else is 404. Files are found by index row, never by joining a path from the request: only files listed in
the index and still inside the indexed folder (symlinks resolved) are ever read. ThreadingHTTPServer: one thread per
request; an exception answers 500 and the server goes on.
"""

from __future__ import annotations

import functools
import io
import json
import mimetypes
import os
import re
import sys
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from absl import logging
from PIL import Image

from tpsearch_jax import user_errors
from tpsearch_jax.search import attribution, explain, image_files, query_text
from tpsearch_jax.search.page import PAGE
from tpsearch_jax.search.searcher import MAX_K, Searcher

MAX_QUERY_CHARS = 500
THUMB_HEIGHT = 256
_FILE_ROUTE = re.compile(r"/(image|thumb|overlay|occlusion)/([0-9]{1,9})(\.png)?")
_PNG_ROUTES = ("overlay", "occlusion")


class RequestError(user_errors.UserError):
  """A bad request: answered with HTTP 400 and {"error": message}."""


def parse_text(params: dict) -> tuple[str, str]:
  """The q and long parameters of a request → (q, long-query mode); RequestError saying what is wrong."""
  q = params.get("q", [""])[0]
  if not q.strip():
    raise RequestError("missing or empty query: pass q=<a description of the person>")
  if len(q) > MAX_QUERY_CHARS:
    raise RequestError(f"query too long: {len(q)} characters, the limit is {MAX_QUERY_CHARS}")
  mode = params.get("long", ["truncate"])[0] or "truncate"
  if mode not in query_text.LONG_QUERY_MODES:
    raise RequestError(f"long must be one of {', '.join(query_text.LONG_QUERY_MODES)}, got {mode!r}")
  return q, mode


def parse_search(query: str) -> tuple[str, int, str]:
  """The raw query string of /api/search → (q, k, long-query mode); RequestError saying what is wrong."""
  params = urllib.parse.parse_qs(query, keep_blank_values=True)
  q, mode = parse_text(params)
  k_text = params.get("k", ["10"])[0].strip()
  if not re.fullmatch(r"[0-9]{1,6}", k_text) or int(k_text) < 1:
    raise RequestError(f"k must be a positive integer, got {k_text!r}")
  k = int(k_text)
  if k > MAX_K:
    raise RequestError(f"k must be at most {MAX_K}, got {k}")
  return q, k, mode


class SearchServer(ThreadingHTTPServer):
  """The HTTP server holding one ``Searcher`` (``searcher`` None: bound, the searcher attached later)."""

  daemon_threads = True

  def __init__(self, searcher: Searcher | None, host: str = "127.0.0.1", port: int = 8080):
    self.searcher = searcher
    super().__init__((host, port), Handler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"

  def file_for(self, row: int) -> str | None:
    """The real path of index row ``row`` when it is a file inside the indexed folder, else None."""
    s = self.searcher
    if not 0 <= row < s.num_images:
      return None
    path = s.paths[row]
    if not image_files.inside(path, s.root) or not os.path.isfile(path):
      return None
    return os.path.realpath(path)

  def search_json(self, q: str, k: int, mode: str = "truncate") -> dict:
    start = time.perf_counter()
    answer = self.searcher.answer([q], k, mode, phrases=True)[0]
    parts = self.searcher.layout.has_parts
    tail = urllib.parse.urlencode({"q": q, "long": mode})
    results = [{"rank": h.rank, "path": h.relpath, "score": round(h.score, 4), "url": f"/image/{h.id}",
                "thumb_url": f"/thumb/{h.id}", "overlay_url": f"/overlay/{h.id}.png" if parts else None,
                "occlusion_url": f"/occlusion/{h.id}.png?{tail}", "explanation": h.explanation}
               for h in answer.hits]
    return {"query": q, "k": k, "long": mode, "took_ms": round(1000 * (time.perf_counter() - start), 1),
            "grid": list(self.searcher.layout.grid) if parts else None, **answer.reading,
            "sentences": answer.sentences,
            "phrases": [{"text": q[a:b], "start": a, "end": b} for a, b in answer.phrases], "results": results}

  def info_json(self) -> dict:
    s = self.searcher
    return {"num_images": s.num_images, "images_root": s.root, "method": s.meta.get("method"),
            "step": s.run.step, "workdir": s.workdir, "parts": s.layout.has_parts,
            "pieces": list(s.layout.names), "max_k": MAX_K, "max_query_chars": MAX_QUERY_CHARS, "kind": s.kind}


@functools.lru_cache(maxsize=2048)
def _thumbnail(path: str, mtime_ns: int) -> bytes:
  del mtime_ns  # part of the cache key only
  with Image.open(path) as im:
    im = im.convert("RGB")
    if im.height > THUMB_HEIGHT:
      im = im.resize((max(1, round(im.width * THUMB_HEIGHT / im.height)), THUMB_HEIGHT), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=88)
  return buf.getvalue()


def occlusion_png(searcher: Searcher, path: str, row: int, q: str, mode: str) -> bytes:
  """The occlusion map of query ``q`` over index row ``row``'s image as PNG bytes."""
  drops, side = searcher.occlusion(q, row, mode)
  with Image.open(path) as im:
    out = attribution.draw_occlusion(im, drops, side, searcher.image_size, height=THUMB_HEIGHT)
  buf = io.BytesIO()
  out.save(buf, "PNG")
  return buf.getvalue()


def overlay_png(searcher: Searcher, path: str, row: int) -> bytes:
  """The foreground map + stripes of index row ``row`` as PNG bytes."""
  with Image.open(path) as im:
    out = explain.overlay(im, searcher.foreground_of(row), searcher.layout, height=THUMB_HEIGHT)
  buf = io.BytesIO()
  out.save(buf, "PNG")
  return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
  """GET routes of the module docstring."""

  server: SearchServer
  server_version = "tpsearch_jax"
  protocol_version = "HTTP/1.1"

  def do_GET(self):  # noqa: N802  (http.server's name)
    try:
      self._route()
    except (BrokenPipeError, ConnectionResetError):
      pass
    except Exception as e:  # pylint: disable=broad-except  (answer and keep serving)
      logging.exception("error answering %s", self.path)
      self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}"})

  def _route(self):
    url = urllib.parse.urlsplit(self.path)
    if url.path in ("/", "/index.html"):
      return self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
    if url.path == "/api/search":
      try:
        answer = self.server.search_json(*parse_search(url.query))
      except user_errors.UserError as e:  # RequestError, or a query the searcher refuses
        return self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
      return self._send_json(HTTPStatus.OK, answer)
    if url.path == "/api/info":
      return self._send_json(HTTPStatus.OK, self.server.info_json())
    m = _FILE_ROUTE.fullmatch(url.path)  # the raw path: %2e%2e, "..", "//" never match
    if m and (m.group(3) is not None) == (m.group(1) in _PNG_ROUTES):
      path = self.server.file_for(int(m.group(2)))
      if path is not None:
        return self._send_file(m.group(1), path, int(m.group(2)), url.query)
    return self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})

  def _send_file(self, kind: str, path: str, row: int, query: str = ""):
    if kind == "image":
      with open(path, "rb") as f:
        body = f.read()
      return self._send(HTTPStatus.OK, body, mimetypes.guess_type(path)[0] or "application/octet-stream")
    if kind == "thumb":
      return self._send(HTTPStatus.OK, _thumbnail(path, os.stat(path).st_mtime_ns), "image/jpeg")
    if kind == "occlusion":
      try:
        q, mode = parse_text(urllib.parse.parse_qs(query, keep_blank_values=True))
      except RequestError as e:
        return self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
      return self._send(HTTPStatus.OK, occlusion_png(self.server.searcher, path, row, q, mode), "image/png")
    if not self.server.searcher.layout.has_parts:
      return self._send_json(HTTPStatus.NOT_FOUND, {"error": "no foreground map: not a part-level model"})
    return self._send(HTTPStatus.OK, overlay_png(self.server.searcher, path, row), "image/png")

  def _send_json(self, status, payload: dict):
    self._send(status, json.dumps(payload).encode(), "application/json")

  def _send(self, status, body: bytes, content_type: str):
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store" if content_type == "application/json" else "max-age=300")
    self.send_header("X-Content-Type-Options", "nosniff")
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin  (http.server's signature)
    logging.debug("%s " + format, self.address_string(), *args)


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8080, workdir: str | None = None) -> None:
  """Binds the port (a port in use is refused before any model work), loads the index and its run once, then
  serves until interrupted (prints the URL first)."""
  try:
    server = SearchServer(None, host, port)
  except OSError as e:  # address in use, unknown host, no permission for a low port
    raise user_errors.UserError(f"cannot listen on --host={host} --port={port}: {e.strerror or e}; pass another "
                                "--port (0 picks a free one)") from e
  try:
    server.searcher = Searcher(index_dir, workdir=workdir)
  except BaseException:
    server.server_close()
    raise
  searcher = server.searcher
  print(f"Serving {searcher.num_images} images of {index_dir} at {server.url} (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    sys.stdout.flush()
