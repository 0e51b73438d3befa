"""Samplers: schedules as pure functions of (steps, shift, sequence length), solver steps as pure functions of
(state, model output), one denoising loop (`loop.sample`, a `lax.scan`) for every solver, and the table of
solvers by diffusers scheduler class name (`table.SAMPLERS`). Nothing here imports a model."""
