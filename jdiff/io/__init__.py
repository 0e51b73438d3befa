"""Writing output files (images, videos, converted checkpoints): checks before the work, atomic writes."""
