"""Samplers: schedules as pure functions of (steps, shift, sequence length), solver steps as pure functions of
(state, model output), and the denoising loop as one `lax.scan`. Nothing here imports a model."""
