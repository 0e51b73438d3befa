"""FLUX.2 (klein and dev): transformer and VAE."""
