"""The tf.data input pipeline, in pieces; the public entry is ``tpsearch_jax.data.input_pipeline``.

    options.py     TF set-up, tf.data options, the config.data fields each pipeline reads
    checks.py      image pre-scan (full decode, cached: data/image_check.py), BatchIterator naming mid-stream failures
    image_ops.py   decode + resize, augmentation parameters, per-example train / eval transforms
    sources.py     where encoded images come from: the image folder or the prepared TFDS records
    training.py    TrainPipeline: screened, tokenized train table -> sampler-ordered batches
    evaluation.py  eval_datasets: padded gallery and query batches
"""
