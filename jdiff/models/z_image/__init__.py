"""Z-Image (S3-DiT single-stream transformer)."""
