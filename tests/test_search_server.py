"""The search server on a tiny trained part-level run: the JSON API, bad requests (400), path traversal (404),
symlinks leading out of the folder, concurrent clients, the page; the server binds 127.0.0.1 by default."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import threading
import urllib.parse

import pytest

import search_fixtures
from tpsearch_jax.search import indexing
from tpsearch_jax.search.searcher import Searcher
from tpsearch_jax.search.server import MAX_QUERY_CHARS, SearchServer

SECRET = "top secret outside the indexed folder"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """A gallery folder (the run's train images) with a secret file beside it, its index, and a running server."""
  run = search_fixtures.trained_run(tmp_path_factory)
  base = tmp_path_factory.mktemp("served")
  gallery = base / "gallery"
  train = sorted({r["file_path"] for r in run["records"] if r["split"] == "train"})
  for rel in train:
    os.makedirs(gallery / os.path.dirname(rel), exist_ok=True)
    shutil.copy(os.path.join(run["imgs"], rel), gallery / rel)
  (base / "secret.txt").write_text(SECRET)
  shutil.copy(gallery / train[0], base / "outside.jpg")
  os.symlink(base / "outside.jpg", gallery / "link_out.jpg")  # a symlink leading out: never indexed
  index = str(base / "index")
  indexing.build(run["workdir"], str(gallery), index, batch_size=16)
  searcher = Searcher(index)
  server = SearchServer(searcher, port=0)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield {"server": server, "searcher": searcher, "gallery": str(gallery), "base": str(base), "run": run,
         "train": train}
  server.shutdown()
  server.server_close()


def get(server, path: str):
  """GET ``path`` exactly as written (no client-side normalisation) → (status, headers, body bytes)."""
  host, port = server.server_address[:2]
  conn = http.client.HTTPConnection(host, port, timeout=60)
  try:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), resp.read()
  finally:
    conn.close()


def api(server, **params):
  status, _, body = get(server, "/api/search?" + urllib.parse.urlencode(params))
  return status, json.loads(body)


def caption_of(records, rel):
  return next(r["captions"][0] for r in records if r["file_path"] == rel)


def test_binds_localhost_by_default(served):
  assert served["server"].server_address[0] == "127.0.0.1"
  assert "link_out.jpg" not in "".join(served["searcher"].paths)  # the symlink leading out was not indexed


def test_search_json_ranks_explains_and_serves_images(served):
  server, gallery = served["server"], served["gallery"]
  query = caption_of(served["run"]["records"], served["train"][0])
  status, data = api(server, q=query, k=5)
  assert status == 200 and data["query"] == query and data["k"] == 5
  results = data["results"]
  assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
  scores = [r["score"] for r in results]
  assert scores == sorted(scores, reverse=True)
  for r in results:
    assert not os.path.isabs(r["path"]) and os.path.isfile(os.path.join(gallery, r["path"]))
    pieces = r["explanation"]["pieces"]
    assert [p["name"] for p in pieces] == ["global", "coarse_1", "coarse_2", "part_1", "part_2", "part_3"]
    assert sum(p["contribution"] for p in pieces) == pytest.approx(r["score"], abs=2e-3)
    assert [s["rows"] for s in r["explanation"]["stripes"]] == [[0, 2], [2, 4], [4, 6]]
    assert [s["cosine"] for s in r["explanation"]["stripes"]] == [p["cosine"] for p in pieces[3:]]
  status, headers, body = get(server, results[0]["url"])
  assert status == 200 and headers["Content-Type"] == "image/jpeg"
  with open(os.path.join(gallery, results[0]["path"]), "rb") as f:
    assert body == f.read()
  for key in ("thumb_url", "overlay_url"):
    status, headers, body = get(server, results[0][key])
    assert status == 200 and headers["Content-Type"].startswith("image/") and len(body) > 100
  # k beyond the gallery: every image once.
  status, data = api(server, q=query, k=100)
  assert status == 200 and len(data["results"]) == served["searcher"].num_images
  assert len({r["path"] for r in data["results"]}) == served["searcher"].num_images


@pytest.mark.parametrize("params,message", [
    ({}, "missing or empty query"), ({"q": ""}, "missing or empty query"), ({"q": "   \t"}, "missing or empty"),
    ({"q": "a man", "k": "0"}, "positive integer"), ({"q": "a man", "k": "-3"}, "positive integer"),
    ({"q": "a man", "k": "abc"}, "positive integer"), ({"q": "a man", "k": "2.5"}, "positive integer"),
    ({"q": "a man", "k": ""}, "positive integer"), ({"q": "a man", "k": "101"}, "at most 100"),
    ({"q": "x" * (MAX_QUERY_CHARS + 1)}, f"the limit is {MAX_QUERY_CHARS}"),
])
def test_bad_requests_are_400_and_the_server_goes_on(served, params, message):
  status, data = api(served["server"], **params)
  assert status == 400 and message in data["error"]
  status, data = api(served["server"], q="a person in blue trousers", k=2)
  assert status == 200 and len(data["results"]) == 2


@pytest.mark.parametrize("path", [
    "/image/../index.json", "/image/..%2f..%2fsecret.txt", "/image/%2e%2e/%2e%2e/secret.txt", "/image/%2e%2e%2fx",
    "/image//etc/passwd", "/image/0/../../secret.txt", "/image/-1", "/image/99999", "/image/1e3", "/image/0x1",
    "/image/0.png", "/thumb/abc", "/overlay/0", "/overlay/99999.png", "/../secret.txt", "/%2e%2e/secret.txt",
    "/secret.txt", "/etc/passwd", "/gallery/cam0", "/image/" + "9" * 30,
])
def test_paths_outside_the_index_are_404(served, path):
  status, _, body = get(served["server"], path)
  assert status == 404 and SECRET.encode() not in body


def test_absolute_path_in_the_query_string_is_not_served(served):
  status, _, body = get(served["server"], "/image/0?path=" + urllib.parse.quote(os.path.join(served["base"],
                                                                                              "secret.txt")))
  assert status == 200 and SECRET.encode() not in body  # row 0 is served; the parameter is ignored


def test_indexed_file_swapped_for_a_symlink_out_is_404(served):
  searcher, server = served["searcher"], served["server"]
  path = searcher.paths[1]
  assert get(server, "/image/1")[0] == 200
  backup = path + ".bak"
  os.rename(path, backup)
  try:
    os.symlink(os.path.join(served["base"], "secret.txt"), path)
    for route in ("/image/1", "/thumb/1", "/overlay/1.png"):
      status, _, body = get(server, route)
      assert status == 404 and SECRET.encode() not in body
  finally:
    os.remove(path)
    os.rename(backup, path)
  assert get(server, "/image/1")[0] == 200


def test_several_clients_at_once(served):
  server = served["server"]
  jobs = [dict(q=f"a person wearing {c} trousers", k=3) for c in ("black", "blue", "red", "white")] * 3
  jobs += [dict(q="", k=3), dict(q="a man", k="x")] * 2
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = list(pool.map(lambda p: api(server, **p), jobs))
    files = list(pool.map(lambda i: get(server, f"/thumb/{i}")[0], range(8)))
  assert [s for s, _ in answers] == [200] * 12 + [400] * 4
  assert all(len(d["results"]) == 3 for _, d in answers[:12])
  assert answers[0][1]["results"] == answers[4][1]["results"]  # same query, same answer
  assert files == [200] * 8


def test_page_and_info(served):
  status, headers, body = get(served["server"], "/")
  assert status == 200 and headers["Content-Type"].startswith("text/html")
  assert b'id="q"' in body and b"/api/search" in body
  status, _, body = get(served["server"], "/api/info")
  info = json.loads(body)
  assert status == 200 and info["num_images"] == served["searcher"].num_images and info["parts"] is True
  assert info["max_query_chars"] == MAX_QUERY_CHARS


def test_malformed_requests_do_not_stop_the_server(served):
  server = served["server"]
  host, port = server.server_address[:2]
  for raw, status in ((b"garbage\r\n\r\n", b"400"),  # HTTP/0.9-style: answered with the error page only
                      (b"GET /api/search?q=%ff%fe%ZZ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"200"),
                      (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"501"),
                      (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"414")):
    with socket.create_connection((host, port), timeout=30) as s:
      s.sendall(raw)
      answer = s.makefile("rb").read(2000)
    assert status in answer, answer[:200]
  assert api(server, q="a person", k=1)[0] == 200
