"""Former home of the CLIP tokenizer, now ``tpsearch_jax.models.clip.tokenizer``; these names re-export it."""

from tpsearch_jax.models.clip.tokenizer import (EOT_ID, MASK_ID, NUM_MERGES, PAD_ID, SOT_ID, VOCAB_PATH, VOCAB_SIZE,
                                                ClipTokenizer, byte_symbols, clean, default_tokenizer, tokenize)

__all__ = ["EOT_ID", "MASK_ID", "NUM_MERGES", "PAD_ID", "SOT_ID", "VOCAB_PATH", "VOCAB_SIZE", "ClipTokenizer",
           "byte_symbols", "clean", "default_tokenizer", "tokenize"]
