"""CLIP text encoder (transformers `CLIPTextModel`), FLUX.1's pooled-prompt encoder."""
