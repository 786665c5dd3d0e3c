"""The tf.data input pipeline, in pieces (the only modules besides the TFDS builders that import TensorFlow).

    options.py     TF set-up, tf.data options, the config.data fields each pipeline reads
    checks.py      the image pre-scan by the skip rule (full decode, cached: data/image_check.py), BatchIterator naming
                   mid-stream failures
    image_ops.py   decode + resize, augmentation parameters, per-example train / eval transforms
    sources.py     where encoded images come from: the image folder or the prepared TFDS records
    training.py    TrainPipeline: screened, tokenized train table -> sampler-ordered batches; train_iterator,
                   skipped_by_split
    evaluation.py  eval_datasets: padded gallery and query batches

    pipeline = training.TrainPipeline(ann.train, config.data, global_batch_size, seed)   # screens + tokenizes once
    pipeline.steps_per_epoch, pipeline.num_examples, pipeline.num_skipped
    batches = pipeline.iterator(start_step)
    images, texts = evaluation.eval_datasets(ann.split("val"), config.data, eval_batch_size)
    training.skipped_by_split(pipeline, {"val": (images, texts)})  # {"train": {"missing", "corrupt", …}, …}

Every setting comes from ``config.data`` (defaults in ``tpsearch_jax/configs/base.py``); a data block lacking a field
the pipeline reads raises naming it. Images come from the files, or with ``data.use_tfds`` from the TFDS records
prepared in ``data.tfds_data_dir`` (same bytes, same decode: the same batches). These modules hide the GPUs from TF.
"""
