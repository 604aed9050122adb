"""Fine-tuning data: embedded instruction tasks, SFT jsonl rows, packing and batching."""
