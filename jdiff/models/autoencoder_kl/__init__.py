"""diffusers `AutoencoderKL`, the image VAE of Stable Diffusion, SDXL and FLUX.1."""
