"""A tiny random model of Gemma 4's architecture (``Gemma4ForCausalLM``), built in-process: its
tokenizer knows Gemma 4's special tokens and renders Gemma 4's published chat template
(tests/data/templates), so the real vLLM engine reads a chat exactly as a Gemma 4 server does."""

from __future__ import annotations

from pathlib import Path

from conftest import never_generated

from hybridchat.templates import GEMMA4

TEMPLATE = Path(__file__).parent / "data" / "templates" / "gemma-4-31B-it.jinja"
SPECIAL_TOKENS = ["<pad>", *GEMMA4.markers]


def build(directory: Path) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["The capital of France is Paris.", "Hello! How can I help you today?", "user model system"] * 20
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token=GEMMA4.turn_end, pad_token="<pad>"
    )
    tokenizer.chat_template = TEMPLATE.read_text()
    torch.manual_seed(0)
    config = Gemma4TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=32,
        layer_types=["sliding_attention", "full_attention"], sliding_window=64, max_position_embeddings=4096,
        hidden_size_per_layer_input=0, num_kv_shared_layers=0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Gemma4ForCausalLM(config)
    # The stand-in's replies (transformers' generate) never empty; vLLM, which reads no such
    # setting, writes what it samples.
    model.generation_config.suppress_tokens = never_generated(tokenizer)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
