"""Caption grammar of synthetic_pedes: CUHK-PEDES-like sentences over a random subset of an identity's attributes.

Each caption picks the visible parts to describe, words them with synonyms, orders them in one of several sentence
forms and sometimes adds a detail unrelated to appearance ("walking on the street"). ``SYNONYMS`` is the complete table
of surface words per attribute value, so a caption can be checked against the attribute table without the grammar.
Irrelevant details never contain colour or clothing words.

``make_plain_caption`` is the "plain" caption style (the pretraining stand-in's data): other sentence templates and
vocabulary ("top", "bottoms", "outfit"), colours of the upper and lower garment only, and no part detail (no garment
type, sleeves, pattern, hair, hat, glasses, shoes or bag).
"""

from __future__ import annotations

import numpy as np

SYNONYMS: dict[str, dict[str, list[str]]] = {
    "colour": {
        "black": ["black"], "white": ["white"], "grey": ["grey", "gray"], "blue": ["blue"],
        "navy": ["navy", "dark blue", "navy blue"], "red": ["red"], "green": ["green"], "yellow": ["yellow"],
        "pink": ["pink"], "purple": ["purple", "violet"], "orange": ["orange"], "brown": ["brown"],
        "beige": ["beige", "cream-coloured"],
    },
    "hair.colour": {"black": ["black"], "brown": ["brown"], "blonde": ["blonde", "blond"], "grey": ["grey", "gray"],
                    "red": ["red", "ginger"]},
    "hair.length": {"short": ["short"], "long": ["long", "shoulder-length"]},
    "hat.type": {"cap": ["cap", "baseball cap"], "beanie": ["beanie", "knit hat", "woolly hat"]},
    "glasses": {"glasses": ["glasses", "spectacles"], "sunglasses": ["sunglasses", "dark glasses", "shades"]},
    "upper.type": {"t-shirt": ["t-shirt", "tee", "T-shirt"], "shirt": ["shirt", "button-up shirt", "button-down shirt"],
                   "sweater": ["sweater", "jumper", "pullover"], "jacket": ["jacket", "zip-up jacket"],
                   "coat": ["coat", "overcoat", "trench coat"]},
    "upper.sleeves": {"short": ["short sleeves", "short-sleeved"], "long": ["long sleeves", "long-sleeved"]},
    "upper.pattern": {"striped": ["striped", "with stripes", "with horizontal stripes"],
                      "logo": ["with a logo on the front", "with a round logo", "with a print on the chest"],
                      "plain": ["plain"]},
    "lower.type": {"trousers": ["trousers", "pants", "slacks"], "jeans": ["jeans", "denim jeans"],
                   "shorts": ["shorts"], "skirt": ["skirt", "knee-length skirt"]},
    "shoes": {"shoes": ["shoes", "sneakers", "trainers"]},
    "bag.type": {"backpack": ["backpack", "rucksack"], "handbag": ["handbag", "purse", "shoulder bag"],
                 "none": ["is not carrying a bag", "carries nothing", "has nothing in the hands"]},
}
SUBJECTS = ["A person", "The person", "A pedestrian", "This pedestrian", "The individual", "Someone", "This person"]
PHRASE_SUBJECTS = ["A person", "A pedestrian", "Someone", "An individual"]  # for "A person wearing …" fragments
IRRELEVANT = ["walking on the street", "walking along the pavement", "standing still", "looking ahead",
              "apparently in a hurry", "walking past the camera", "seen from a distance", "waiting for someone"]


def _w(rng: np.random.Generator, words: list[str]) -> str:
  return words[int(rng.integers(len(words)))]


def _colour(rng, value: str) -> str:
  return _w(rng, SYNONYMS["colour"][value])


def _article(phrase: str) -> str:
  return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _upper(a: dict, rng, visible: set[str]) -> str:
  noun = _w(rng, SYNONYMS["upper.type"][a["upper.type"]])
  colour = _colour(rng, a["upper.colour"])
  pattern = a["upper.pattern"]
  if pattern == "logo" and "logo" not in visible:
    pattern = "unseen"  # the chest is not in view: say nothing about the pattern
  pre, post = [colour], []
  if pattern == "plain" and rng.random() < 0.1:
    pre.insert(0, "plain")
  if pattern == "striped" and rng.random() < 0.8:
    (pre.append("striped") if rng.random() < 0.5 else post.append(_w(rng, SYNONYMS["upper.pattern"]["striped"][1:])))
  elif pattern == "logo" and rng.random() < 0.8:
    post.append(_w(rng, SYNONYMS["upper.pattern"]["logo"]))
  if a["upper.type"] in ("t-shirt", "shirt") and rng.random() < 0.6:
    if rng.random() < 0.5:
      pre.append(f"{a['upper.sleeves']}-sleeved")
    else:
      post.append(f"with {a['upper.sleeves']} sleeves")
  return _article(" ".join(pre + [noun] + post[:1]))


def _lower(a: dict, rng) -> str:
  noun = _w(rng, SYNONYMS["lower.type"][a["lower.type"]])
  phrase = f"{_colour(rng, a['lower.colour'])} {noun}"
  return _article(phrase) if a["lower.type"] == "skirt" else phrase


def _shoes(a: dict, rng) -> str:
  return f"{_colour(rng, a['shoes.colour'])} {_w(rng, SYNONYMS['shoes']['shoes'])}"


def _hair(a: dict, rng) -> str:
  length = _w(rng, SYNONYMS["hair.length"][a["hair.length"]])
  colour = _w(rng, SYNONYMS["hair.colour"][a["hair.colour"]])
  r = rng.random()
  return f"{length} {colour} hair" if r < 0.5 else (f"{colour} hair" if r < 0.75 else f"{length} hair")


def _bag_clause(a: dict, rng) -> str:
  if a["bag.type"] == "none":
    return _w(rng, SYNONYMS["bag.type"]["none"])
  bag = _article(f"{_colour(rng, a['bag.colour'])} {_w(rng, SYNONYMS['bag.type'][a['bag.type']])}")
  where = {"backpack": ["on the back", "over both shoulders"], "handbag": ["on one shoulder", "at the side"]}
  return _w(rng, [f"is carrying {bag}", f"carries {bag}", f"has {bag} {_w(rng, where[a['bag.type']])}"])


def _hat_clause(a: dict, rng) -> str:
  hat = _article(f"{_colour(rng, a['hat.colour'])} {_w(rng, SYNONYMS['hat.type'][a['hat.type']])}")
  return _w(rng, [f"wears {hat}", f"has {hat} on the head"])


def _glasses_clause(a: dict, rng) -> str:
  verb = _w(rng, ["wears", "has"])
  on = " on" if verb == "has" and rng.random() < 0.4 else ""
  return f"{verb} {_w(rng, SYNONYMS['glasses'][a['glasses']])}{on}"


def _join(items: list[str]) -> str:
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(a: dict, visible: set[str], rng: np.random.Generator) -> str:
  """One sentence or two about identity ``a``, mentioning only parts in ``visible``."""
  want = lambda p, part: part in visible and rng.random() < p  # noqa: E731
  has_bag = a["bag.type"] != "none"
  mention = {
      "upper": want(0.92, "upper"), "lower": want(0.8, "lower"), "shoes": want(0.5, "shoes"),
      "hair": want(0.55, "hair"), "hat": a["hat.type"] != "none" and want(0.85, "hat"),
      "glasses": a["glasses"] != "none" and want(0.75, "glasses"),
      "bag": want(0.85 if has_bag else 0.2, "bag"),
  }
  if sum(mention.values()) < 2:
    mention["upper"] = mention["lower"] = True
  clothes = [part for part in ("upper", "lower", "shoes") if mention[part]]
  if len(clothes) > 1 and rng.random() < 0.25:
    clothes = [clothes[i] for i in rng.permutation(len(clothes))]
  phrases = [{"upper": lambda: _upper(a, rng, visible), "lower": lambda: _lower(a, rng),
              "shoes": lambda: _shoes(a, rng)}[c]() for c in clothes]
  extras = []
  if mention["hat"]:
    extras.append(_hat_clause(a, rng))
  if mention["glasses"]:
    extras.append(_glasses_clause(a, rng))
  if mention["bag"]:
    extras.append(_bag_clause(a, rng))
  subject = _w(rng, SUBJECTS)
  hair = _hair(a, rng) if mention["hair"] else None
  person = lambda: _w(rng, ["The person", "This person", "The pedestrian"])  # noqa: E731

  form = int(rng.integers(4)) if phrases else 2
  if form == 0:  # "A person with long hair is wearing X and Y. The person carries ..."
    first = f"{subject}" + (f" with {hair}" if hair else "") + f" is wearing {_join(phrases)}"
    rest = [f"{person()} {e}" for e in extras]
  elif form == 1:  # "A pedestrian wearing X and Y, with short hair, who carries ..."
    first = f"{_w(rng, PHRASE_SUBJECTS)} wearing {_join(phrases)}" + (f", with {hair}" if hair else "")
    first += f", who {_join(extras)}" if extras else ""
    rest = []
  elif form == 2:  # "The person has black hair, wears X and carries Y."
    verbs = ([f"has {hair}"] if hair else []) + ([f"wears {_join(phrases)}"] if phrases else []) + extras
    first, rest = f"{subject} {_join(verbs[:3])}", [f"{person()} also {e}" for e in verbs[3:]]
  else:  # "This person is dressed in X and Y. The person has long hair. ..."
    first = f"{subject} is dressed in {_join(phrases)}"
    rest = ([f"{person()} has {hair}"] if hair else []) + ([f"{person()} {_join(extras)}"] if extras else [])
  if rng.random() < 0.3:
    first += f", {_w(rng, IRRELEVANT)}"
  return ". ".join(t[0].upper() + t[1:] for t in [first] + rest) + "."


PLAIN_COLOURS = {"navy": "dark blue", "beige": "light brown", "grey": "grey"}
PLAIN_TEMPLATES = ["Someone in a {u} top and {l} bottoms.", "A figure dressed in {u} above and {l} below.",
                   "An individual whose outfit is {u} on top and {l} at the bottom.",
                   "Person, {u} upper clothing, {l} lower clothing.", "A walker wearing {u} and {l}."]


def make_plain_caption(a: dict, rng: np.random.Generator) -> str:
  """One "plain" style sentence about identity ``a``: upper and lower colours in one of ``PLAIN_TEMPLATES``."""
  colour = lambda key: PLAIN_COLOURS.get(a[key], a[key])  # noqa: E731
  return _w(rng, PLAIN_TEMPLATES).format(u=colour("upper.colour"), l=colour("lower.colour"))
