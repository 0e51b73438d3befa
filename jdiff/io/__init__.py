"""Reading model files: safetensors headers and tensors, diffusers-format directories."""
