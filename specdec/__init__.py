"""specdec: lossless, batched speculative decoding for Hugging Face causal LMs on a zero-copy KV arena."""
from .engine import Result, generate

__all__ = ["generate", "Result"]
__version__ = "0.1.0"
