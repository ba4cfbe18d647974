"""Training: model loading, tokenising with cache, one stage on HF Trainer, strategies."""
