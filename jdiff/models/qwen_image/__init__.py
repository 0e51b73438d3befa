"""Qwen-Image: the MMDiT transformer, its rotary layout and the Qwen-Image VAE (the Wan2.1 network)."""
