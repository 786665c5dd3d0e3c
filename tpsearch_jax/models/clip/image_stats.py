"""CLIP's image normalisation constants (RGB, applied to [0, 1] pixels), as its pretrained weights expect."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
