"""config.eval.subsets: which query subsets of the test split a run reports (training/setup.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from tpsearch_jax.configs import base
from tpsearch_jax.training import setup as setup_lib
from tpsearch_jax.user_errors import UserError


def _setup(subsets, dataset: str) -> setup_lib.Setup:
  """A Setup holding only what ``query_subsets`` reads: the config, the data options and the annotations."""
  config = base.get_config("clip")
  config.eval.subsets = subsets
  split = types.SimpleNamespace(captions=["a", "b", "c"])
  ann = types.SimpleNamespace(root="/data", split=lambda name: split)
  options = types.SimpleNamespace(data=types.SimpleNamespace(name=dataset))
  return setup_lib.Setup(config, options, ann, None, None, 1, None, None, None)


@pytest.fixture
def fake_hard(monkeypatch):
  calls = []

  def queries(root, split):
    calls.append(root)
    return np.array([0, 2])

  monkeypatch.setitem(setup_lib.QUERY_SUBSETS, "hard", ("synthetic_pedes", queries))
  return calls


def test_the_default_reports_the_hard_subset_of_synthetic_pedes_only(fake_hard):
  assert tuple(base.get_config("clip").eval.subsets) == ("hard",)
  s = _setup(("hard",), "synthetic_pedes")
  assert list(s.query_subsets("test")["hard"]) == [0, 2]
  assert s.query_subsets("val") == {}
  s.query_subsets("test")
  assert fake_hard == ["/data"]  # computed once per run
  assert _setup(("hard",), "cuhk_pedes").query_subsets("test") == {}  # a dataset without it


def test_an_empty_choice_reports_none(fake_hard):
  assert _setup((), "synthetic_pedes").query_subsets("test") == {}
  assert fake_hard == []


def test_an_unknown_subset_is_named():
  config = base.get_config("clip")
  config.eval.subsets = ("hard", "twins")
  with pytest.raises(UserError, match=r"config.eval.subsets names unknown subset\(s\) \['twins'\]"):
    setup_lib.subset_names(config)


def test_a_config_without_the_field_takes_the_default():
  config = base.get_config("clip")
  with config.unlocked():
    del config.eval["subsets"]
  assert setup_lib.subset_names(config) == setup_lib.SUBSETS_DEFAULT
