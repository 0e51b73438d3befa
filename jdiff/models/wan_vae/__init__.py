"""diffusers `AutoencoderKLWan`, the causal 3D video VAE of Wan2.1 and Wan2.2."""
