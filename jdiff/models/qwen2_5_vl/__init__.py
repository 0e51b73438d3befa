"""Qwen2.5-VL text encoder (language model, vision tower, image preprocessing): Qwen-Image and Qwen-Image-Edit."""
