"""HunyuanVideo-1.5 (diffusers `HunyuanVideo15Transformer3DModel`): 480p / 720p text- and image-to-video."""
