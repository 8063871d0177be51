"""Running runs: device resolution, model loading, the worker entry point and the executors."""
