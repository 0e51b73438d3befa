"""Mistral-3 text encoder (the language model of transformers `Mistral3ForConditionalGeneration`): FLUX.2-dev."""
