"""Qwen3 text encoder (transformers `Qwen3Model` / `Qwen3ForCausalLM`): Z-Image and FLUX.2-klein."""
