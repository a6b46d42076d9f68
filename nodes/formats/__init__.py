"""Model-format knowledge: families, key layouts, configs, tokenizers, LoRA and embedding files."""
