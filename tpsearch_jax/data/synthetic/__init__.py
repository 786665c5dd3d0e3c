"""synthetic_pedes: a procedural, seeded pedestrian dataset in the CUHK-PEDES on-disk format (no downloads).

    attributes.py  identity attribute schema, skewed frequencies, near-twins, identity-disjoint splits
    captions.py    caption grammar and its synonym table
    shots.py       the per-image nuisances (camera, view, pose, blur, occlusion) and what each image shows
    render.py      PIL renderer of a person under a shot
    generator.py   ``generate`` / ``ensure`` the dataset folder, and the command line

    python -m tpsearch_jax.data.synthetic --out=/data/synthetic_pedes --num_ids=300 --images_per_id=4
"""

from __future__ import annotations

from tpsearch_jax.data.synthetic.generator import ensure, generate, main

__all__ = ["ensure", "generate", "main"]
