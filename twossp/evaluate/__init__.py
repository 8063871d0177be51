"""Evaluation: perplexity per the paper's protocol."""
