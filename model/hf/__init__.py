"""Hugging Face interoperability: config and weight mapping, safetensors I/O, tokenizers.

Entry points: infer/hf_import.py and infer/hf_export.py.
"""
