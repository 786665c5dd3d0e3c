"""Throughput benchmark: ``python -m tpsearch_jax.benchmark [--preset=ci|small|full] [--methods=irra,...] [--out=F]``.

No dataset and no TensorFlow: in-memory synthetic batches of the batch contract's shapes run through the training
library's ``create_train_state`` / ``make_train_step``, the evaluator (``evaluate.Evaluator``),
``tpsearch_jax.metrics`` and ``tpsearch_jax.search.topk``. Per method: compile time, steady-state steps/s and
samples/s, peak device memory, analytic and XLA FLOPs per step, MFU (analytic model FLOPs / step time / device peak);
eval encoding throughput and, at the chosen dataset sizes, the end-to-end test evaluation. Then retrieval-metric time
at the CUHK-PEDES and ICFG-PEDES test sizes (or any ``QUERIESxGALLERYxIDS``) and brute-force search queries/s on a
large index. Steady state = median over timing windows of ``--steps`` steps each, with one ``block_until_ready`` at
the end of each window, after ``--warmup`` steps.

Presets: ``ci`` (tiny model, tiny sizes; a smoke test), ``small`` (384×128 inputs, 4-layer width-256 towers, real
metric/search sizes; for CPUs), ``full`` (CLIP ViT-B/16, batch 128, real sizes). Default: ``full`` on GPU/TPU,
``small`` on CPU.

Modules: ``cli`` (flags, the run), ``presets`` (presets, workload sizes, method configs), ``flops`` (the analytic
FLOP count of a train step, device peaks), ``records`` (records, JSON, Markdown, timing helpers), ``train``, ``eval``,
``metrics``, ``search`` (one section each), ``profile`` (trace → top ops).
"""
