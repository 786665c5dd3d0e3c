"""BERT in Flax (``BertModel``), its HF weight import (``load_bert``) and WordPiece tokenization."""

from tpsearch_jax.models.bert.model import BertConfig, BertModel
from tpsearch_jax.models.bert.tokenizer import BertWordPiece, bert_tokenizer
from tpsearch_jax.models.bert.weights import convert_bert, convert_state_dict, load_bert

__all__ = ["BertConfig", "BertModel", "BertWordPiece", "bert_tokenizer", "convert_bert", "convert_state_dict",
           "load_bert"]
