"""Fine-tuning and evaluation."""
