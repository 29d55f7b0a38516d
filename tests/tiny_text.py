"""A tiny random T5 (full encoder-decoder checkpoint, like the hub's) with a word-level
tokenizer, saved to a directory, for the text-encoder and embedding-cache tests. No download."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("a an the red green blue yellow small big cube sphere cone cylinder on left right of "
         "above below and next to two three").split()
TINY_DIM = 16


def make_tiny_t5(directory: Path, seed: int = 0) -> Path:
    """Write a T5ForConditionalGeneration (d_model 16) + tokenizer to ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    # T5's conventions: pad 0, eos 1, unk 2, and every sequence ends with </s>.
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=TINY_DIM, d_kv=4, num_heads=4, d_ff=32, num_layers=2,
                      num_decoder_layers=1, relative_attention_num_buckets=8, dropout_rate=0.0,
                      feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
