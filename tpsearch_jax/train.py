"""Moved: the library to ``tpsearch_jax.training.{state,config_checks,runs}``, the loop to ``training.trainer`` and
``training.eval_only``; re-exported here for existing scripts."""

from tpsearch_jax.batch import fake_train_batch as example_batch  # noqa: F401
from tpsearch_jax.data.datasets import HOW_TO_GET, load_annotations  # noqa: F401
from tpsearch_jax.data.samplers import steps_per_epoch  # noqa: F401
from tpsearch_jax.training.config_checks import (SELECT_CHOICES, check_parallelism, resolve_config,  # noqa: F401
                                                 warn_if_test_selection)
from tpsearch_jax.training.eval_only import evaluate_only  # noqa: F401
from tpsearch_jax.training.state import TrainState, abstract_train_state, create_train_state, make_train_step  # noqa
from tpsearch_jax.training.trainer import NonFiniteLossError, summarize_train_metrics, train_and_evaluate  # noqa
