"""Training: the TF-free library (``state``, ``optim``, ``checkpointing``, ``runs``) and the loop (``trainer``).

``state``, ``optim``, ``checkpointing`` and ``runs`` never import TensorFlow or CLU, so the search and benchmark
commands use them directly; ``trainer`` adds the input pipeline, CLU writers and the evaluation schedule.
"""
