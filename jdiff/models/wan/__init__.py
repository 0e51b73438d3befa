"""Wan2.1 / Wan2.2 video DiT (diffusers `WanTransformer3DModel`): T2V 1.3B/14B, I2V-14B, TI2V-5B, A14B."""
