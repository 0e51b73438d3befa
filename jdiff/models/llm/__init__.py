"""The decoder-only transformer (Llama family) shared by the LLM text encoders."""
