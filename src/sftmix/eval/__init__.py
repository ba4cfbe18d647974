"""Evaluation: generation backends, GSM8K, HumanEval (sandboxed), MT-Bench (LLM judge), held-out loss."""
