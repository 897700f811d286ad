"""Hugging Face transformers support: checkpoints (safetensors folders; GGUF files converted once into
a cached dense folder), model loading with profiles, media features and tiny test checkpoints.

Every module here but `pieces` (token bytes, shared with the vLLM engine) imports torch/transformers:
only the engines and the commands that need them import this package."""
