"""diffusers `UNet2DConditionModel`, the denoiser of Stable Diffusion 1.5, 2.x and SDXL."""
