"""T5 encoders: transformers `T5EncoderModel` (FLUX.1's T5-v1.1-XXL) and `UMT5EncoderModel` (Wan's UMT5-XXL)."""
