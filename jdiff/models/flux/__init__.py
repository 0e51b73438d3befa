"""FLUX.1 (dev and schnell): the MMDiT transformer of black-forest-labs, in diffusers' layout."""
