"""Readers for the formats model hubs carry: GGUF, Hugging Face and MLflow directories, TorchScript code."""
