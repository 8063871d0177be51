"""Evaluation of a (pruned) model: perplexity per the paper's protocol (``perplexity``), downstream
accuracy through lm-evaluation-harness (``harness``; ``harness_data`` turns published task files
into the records its tasks read), inference speed (``speed``) and greedy generations after fixed
prompts (``generate``)."""
