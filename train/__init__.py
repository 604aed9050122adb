"""Data, tokenizers, optimizer, train step, loop and checkpoints."""
