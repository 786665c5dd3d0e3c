"""The method study on synthetic_pedes: one run per method × seed (``runner``), then the summary (``summary``).

    python -m tpsearch_jax.study --config=configs/study_synthetic.py --out=/tmp/study_out
"""

from tpsearch_jax.study.runner import run_config, run_study
from tpsearch_jax.study.summary import summarize

__all__ = ["run_config", "run_study", "summarize"]
