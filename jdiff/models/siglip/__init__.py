"""SigLIP's vision tower (transformers `SiglipVisionModel`): HunyuanVideo-1.5 I2V's image encoder."""
