"""Writes tests/fixtures/tokenizer_golden.json: CLIP BPE ids of tricky strings from an independent tokenizer.

The ids come from transformers' ``CLIPTokenizer`` (Rust BPE) built from a ``vocab.json`` + ``merges.txt`` that this
script derives from the vendored ``bpe_simple_vocab_16e6.txt.gz``. The transformers tokenizer skips OpenAI's ftfy /
HTML cleaning, so that cleaning is applied here first. Two vocabularies are built:

* ``openai``: all 48,894 merges; id 49405 is "jekyll</w>" (OpenAI CLIP).
* ``mask``: the last merge dropped and 49405 = ``<|mask|>`` (the project's convention).

The fixture stores the ``mask`` ids and checks that the two agree on every string except those containing the dropped
merge (so no golden id is 49405). Known OpenAI ids ("a photo of a dog") pin the vocabulary order.

Run: .venv/bin/python tools/make_tokenizer_golden.py   (no network; needs transformers + tokenizers + ftfy)
"""

from __future__ import annotations

import gzip
import html
import json
import pathlib
import re
import sys
import tempfile

import ftfy
from transformers import CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
GZ = ROOT / "tpsearch_jax" / "models" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
OUT = ROOT / "tests" / "fixtures" / "tokenizer_golden.json"
MERGES = 48894

LONG = ("A young woman with long black hair is wearing a white short-sleeved T-shirt, a pair of light blue jeans "
        "and white sneakers; she carries a brown leather handbag over her left shoulder and holds a phone in her "
        "right hand while walking past a row of parked bicycles near the entrance of the library building.")

STRINGS = [
    "A woman in a white shirt and black pants.",
    "The man\u2019s \u201cred\u201d jacket isn\u2019t zipped.",
    "&amp;",
    "Tom &amp; Jerry",
    "bag &amp;amp; shoes",
    "&lt;b&gt;bold&lt;/b&gt; and &quot;quoted&quot; &#39;x&#39;",
    "He wears a <b>bold</b> shirt & tie",
    "a <b>bag</b> &amp;amp; shoes",
    "&amp;amp;amp; triple",
    LONG,
    LONG + " " + LONG,
    "Caf\u00e9 na\u00efve fa\u00e7ade Stra\u00dfe \u00c5ngstr\u00f6m",
    "cafe\u0301 (combining accent)",
    "\u4e00\u4e2a\u7a7f\u7740\u7ea2\u8272\u5916\u5957\u7684\u5973\u4eba",
    "\u8d64\u3044\u30b8\u30e3\u30b1\u30c3\u30c8\u3092\u7740\u305f\u5973\u6027",
    "\ube68\uac04 \uc7ac\ud0b7\uc744 \uc785\uc740 \uc5ec\uc790",
    "\u041c\u0443\u0436\u0447\u0438\u043d\u0430 \u0432 \u043a\u0443\u0440\u0442\u043a\u0435, \u0631\u062c\u0644, "
    "\u0906\u0926\u092e\u0940",
    "She is smiling \U0001F600\U0001F44D\U0001F3FD and holding a \U0001F34E",
    "family \U0001F468\u200d\U0001F469\u200d\U0001F467 flag \U0001F1EF\U0001F1F5",
    "",
    "   \n\t  ",
    "A  man\n\nwith   a\tbag\r\n and\u00a0a\u2003hat ",
    "He is 25 years old, 180cm tall, 3.5kg bag, number 1234, 2nd row.",
    "He's, she'd, they're, we've, I'm, you'll, don't, HE'S, DON'T, o'clock",
    "The woman\u00e2\u20ac\u2122s bag (mojibake)",
    "\ufb01ne \ufb02ower \uff21\uff22\uff23 \uff11\uff12\uff13",
    "zero\u200bwidth soft\u00adhyphen",
    "wow!!! ... ??? --- *** a/b-c_d (x) [y] {z} #tag @user $5 %",
    "<|startoftext|>hello<|endoftext|>",
    "a\x00b\x07c\x1bd",
    "Dr. Jekyll and Mr. Hyde",
]

ANCHORS = {"a photo of a dog": [49406, 320, 1125, 539, 320, 1929, 49407], "a diagram": [49406, 320, 22697, 49407]}


def openai_clean(text: str) -> str:
  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return re.sub(r"\s+", " ", text).strip().lower()


def byte_vocab() -> list[str]:
  keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  rest = [b for b in range(256) if b not in keep]
  return [chr(b) for b in keep] + [chr(256 + n) for n in range(len(rest))]


def build(folder: pathlib.Path, merges: list[str], last_token: str | None) -> CLIPTokenizer:
  symbols = byte_vocab()
  vocab = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
  if last_token:
    vocab.append(last_token)
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  assert len(vocab) == 49408 and len(set(vocab)) == 49408
  folder.mkdir(parents=True)
  (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
  return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, model_max_length=10**6)


def main() -> int:
  with gzip.open(GZ, "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:MERGES + 1]
  with tempfile.TemporaryDirectory() as tmp:
    openai = build(pathlib.Path(tmp, "openai"), merges, None)
    masked = build(pathlib.Path(tmp, "mask"), merges[:-1], "<|mask|>")
    encode = lambda tok, s: tok(openai_clean(s), add_special_tokens=True)["input_ids"]  # noqa: E731
    for text, ids in ANCHORS.items():
      assert encode(openai, text) == ids == encode(masked, text), text
    cases = []
    for text in STRINGS:
      ids, ref = encode(masked, text), encode(openai, text)
      has_dropped = "jekyll" in openai_clean(text)
      assert (ids != ref) == has_dropped and 49405 not in ids, text
      cases.append({"text": text, "ids": ids, "differs_from_openai": has_dropped})
  assert any(len(c["ids"]) > 77 for c in cases)
  OUT.parent.mkdir(parents=True, exist_ok=True)
  rows = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
  OUT.write_text('{"source": "transformers CLIPTokenizer on OpenAI-cleaned text, mask vocabulary",\n "cases": [\n'
                 + rows + "\n]}\n", encoding="utf-8")
  print(f"wrote {len(cases)} cases to {OUT}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
