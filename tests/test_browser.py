"""End to end in a real browser: ``python -m tpsearch_jax.search serve`` on the tiny trained run, driven by headless
Chromium through selenium (Debian's chromium + chromium-driver; nothing is downloaded at run time). Types a caption,
waits for the grid, checks that every image loaded and that the top result is the person described, checks that an
empty query shows the server's error, that a query longer than the model reads shows its dropped words struck
through, and that a global (clip) run's results show phrase contributions and an occlusion map on demand; keeps
screenshots in $TEST_ARTIFACTS (default tests/artifacts/).

Skipped only outside CI when Chromium or its driver is missing; with CI=true a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

import search_fixtures
from tpsearch_jax.search import indexing
from tpsearch_jax.search.searcher import Searcher
from tpsearch_jax.search.server import SearchServer

try:
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  from selenium.webdriver.common.by import By
  from selenium.webdriver.common.keys import Keys
  from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported by _browser_or_skip: a failure under CI, a skip elsewhere
  webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = os.environ.get("TEST_ARTIFACTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")


def _browser_or_skip():
  if webdriver is None:
    missing = "selenium (pip install -r requirements.txt)"
  else:
    missing = None if CHROMIUM and DRIVER else "chromium and chromedriver (apt-get install chromium chromium-driver)"
  if missing:
    if os.environ.get("CI") == "true":
      pytest.fail(f"CI=true: the browser test must run, but {missing} is missing; `make env` installs it")
    pytest.skip(f"{missing} not installed")


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
  """`serve` as a user starts it (a subprocess, port 0), on an index of all the tiny run's images."""
  _browser_or_skip()
  run = search_fixtures.trained_run(tmp_path_factory)
  index = str(tmp_path_factory.mktemp("browser") / "index")
  build = subprocess.run([sys.executable, "-m", "tpsearch_jax.search", "index", f"--workdir={run['workdir']}",
                          f"--images={run['imgs']}", f"--index={index}", "--batch_size=32"],
                         capture_output=True, text=True, timeout=300)
  assert build.returncode == 0, build.stderr[-3000:]
  assert "indexed 80 images (80 encoded now, 0 skipped)" in build.stdout
  proc = subprocess.Popen([sys.executable, "-m", "tpsearch_jax.search", "serve", f"--index={index}", "--port=0"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines: list[str] = []
  found = threading.Event()

  def read():
    for line in proc.stdout:
      lines.append(line)
      if line.startswith("Serving"):
        found.set()

  threading.Thread(target=read, daemon=True).start()
  found.wait(timeout=240)
  if not found.is_set():
    proc.kill()
    pytest.fail("serve did not start:\n" + "".join(lines[-40:]))
  url = re.search(r"http://127\.0\.0\.1:\d+/", next(l for l in lines if l.startswith("Serving"))).group(0)
  yield url, run
  proc.terminate()
  proc.wait(timeout=30)


@pytest.fixture(scope="module")
def driver():
  _browser_or_skip()
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
    options.add_argument(arg)
  d = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
  d.set_page_load_timeout(60)
  yield d
  d.quit()


def _wait(driver, condition, timeout=60, what="condition"):
  return WebDriverWait(driver, timeout).until(condition, f"timed out waiting for {what}")


def _a_caption_the_model_gets_right(url: str, run: dict) -> tuple[str, int]:
  """The first caption (in annotation order) whose top-1 over the JSON API is its person: the tiny run finds most of
  them, and which ones may vary with the machine's float rounding, so the test does not hard-code one."""
  for record in run["records"]:
    for caption in record["captions"]:
      with urllib.request.urlopen(url + "api/search?" + urllib.parse.urlencode({"q": caption, "k": 1})) as r:
        top = json.load(r)["results"][0]["path"]
      if search_fixtures.person_of(top) == record["id"]:
        return caption, record["id"]
  pytest.fail("the tiny run ranks no caption's person first")


def test_type_a_description_and_find_the_person(server_url, driver):
  url, run = server_url
  query, person = _a_caption_the_model_gets_right(url, run)
  driver.get(url)
  _wait(driver, lambda d: "images in" in d.find_element(By.ID, "info").text, what="the index info line")
  box = driver.find_element(By.ID, "q")
  box.clear()
  box.send_keys(query, Keys.ENTER)
  _wait(driver, lambda d: "results in" in d.find_element(By.ID, "status").text, what="the result grid")
  cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
  assert len(cards) == 10
  assert [int(c.get_attribute("data-rank")) for c in cards] == list(range(1, 11))
  _wait(driver, lambda d: d.execute_script(
      "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"), what="every image to load")
  assert len(driver.find_elements(By.CSS_SELECTOR, "img.thumb")) == 10
  assert len(driver.find_elements(By.CSS_SELECTOR, "img.overlay")) == 10  # part model: foreground + stripes
  assert len(cards[0].find_elements(By.CSS_SELECTOR, ".stripe")) == 3
  top = cards[0].get_attribute("data-path")
  assert search_fixtures.person_of(top) == person, f"top result {top} is not person {person} ({query!r})"
  link = cards[0].find_element(By.CSS_SELECTOR, "a").get_attribute("href")
  assert re.fullmatch(r"http://127\.0\.0\.1:\d+/image/\d+", link)
  os.makedirs(ARTIFACTS, exist_ok=True)
  shot = os.path.join(ARTIFACTS, "search_page.png")
  driver.save_screenshot(shot)
  assert os.path.getsize(shot) > 10_000


def test_empty_query_shows_the_error_and_the_page_recovers(server_url, driver):
  url, _ = server_url
  driver.get(url)
  box = driver.find_element(By.ID, "q")
  box.send_keys("   ", Keys.ENTER)
  _wait(driver, lambda d: "missing or empty query" in d.find_element(By.ID, "status").text, what="the error")
  assert driver.find_elements(By.CSS_SELECTOR, "#results .result") == []
  box.clear()
  box.send_keys("a person in blue jeans", Keys.ENTER)
  deadline = time.time() + 60
  while "results in" not in driver.find_element(By.ID, "status").text and time.time() < deadline:
    time.sleep(0.2)
  assert len(driver.find_elements(By.CSS_SELECTOR, "#results .result")) == 10


PADDING = " She also wears bright pink shoes and a yellow coat. She carries a green umbrella and a red bag."


def _search(driver, url: str, query: str, what: str):
  driver.get(url)
  _wait(driver, lambda d: "images in" in d.find_element(By.ID, "info").text, what="the index info line")
  driver.execute_script("document.getElementById('q').value = arguments[0];", query)  # faster than typing 200 keys
  driver.find_element(By.ID, "q").send_keys(Keys.ENTER)
  _wait(driver, lambda d: "results in" in d.find_element(By.ID, "status").text, what=what)


def test_long_query_shows_the_dropped_words_struck_through(server_url, driver):
  url, run = server_url
  query = run["records"][0]["captions"][0] + PADDING
  with urllib.request.urlopen(url + "api/search?" + urllib.parse.urlencode({"q": query, "k": 3})) as r:
    api = json.load(r)
  assert api["dropped"] and api["tokens"] > api["read"] == 32
  driver.get(url)
  box = _wait(driver, lambda d: d.find_element(By.ID, "q"), what="the query box")
  box.send_keys(query[:480], Keys.ENTER)  # typed as a user does (the box holds 500 characters)
  _wait(driver, lambda d: "results in" in d.find_element(By.ID, "status").text, what="the result grid")
  dropped = driver.find_element(By.CSS_SELECTOR, "#reading .dropped")
  assert dropped.text.split() == api["dropped"]
  assert "line-through" in dropped.value_of_css_property("text-decoration")
  note = driver.find_element(By.CSS_SELECTOR, "#reading .note").text
  assert f"{api['read']} of {api['tokens']} tokens read" in note and "not read: " in note
  first = driver.find_elements(By.CSS_SELECTOR, "#results .result")[0]
  phrases = first.find_elements(By.CSS_SELECTOR, ".phrase")
  assert [p.text for p in phrases] == [query[p["start"]:p["end"]] for p in api["phrases"]]


@pytest.fixture(scope="module")
def clip_url(tmp_path_factory):
  """A global (`clip`) run — random weights, the tiny towers of test_search — serving the tiny run's test images."""
  _browser_or_skip()
  run = search_fixtures.trained_run(tmp_path_factory)
  workdir = search_fixtures.untrained_clip_run(str(tmp_path_factory.mktemp("clip_run")))
  index = str(tmp_path_factory.mktemp("clip_index") / "index")
  indexing.build(workdir, run["imgs"], index, batch_size=32)
  server = SearchServer(Searcher(index, warm=False), port=0)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield server.url
  server.shutdown()
  server.server_close()


def test_clip_run_explains_each_result_with_phrases_and_an_occlusion_map(clip_url, driver):
  query = "a man in a red shirt, with a black backpack and white shoes"
  _search(driver, clip_url, query, "the clip run's grid")
  cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
  assert len(cards) == 10
  for card in cards:  # every result names the query's three phrases with their score drops
    phrases = card.find_elements(By.CSS_SELECTOR, ".phrase")
    assert [p.text for p in phrases] == ["a man in a red shirt", "with a black backpack", "and white shoes"]
    assert all(p.get_attribute("title").startswith("score drops by ") for p in phrases)
  assert driver.find_elements(By.CSS_SELECTOR, "table.why") == []  # one piece: no table of pieces
  cards[0].find_element(By.CSS_SELECTOR, "button.where").click()
  _wait(driver, lambda d: d.execute_script(
      "const i = document.querySelector('img.occl'); return i && i.complete && i.naturalWidth > 0"),
      what="the occlusion map")
  os.makedirs(ARTIFACTS, exist_ok=True)
  driver.save_screenshot(os.path.join(ARTIFACTS, "search_page_clip.png"))
