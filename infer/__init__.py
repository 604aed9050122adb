"""Checkpoint loading, prefill/decode with a KV cache, sampling and evaluation."""
