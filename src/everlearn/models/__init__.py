"""Loading a causal LM and its tokenizer, and the attention/KV-cache shims that keep it running
across transformers versions."""
