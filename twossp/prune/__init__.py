"""Pruning methods: the budget rule (pure maths), stage 1 (width) and stage 2 (depth)."""
