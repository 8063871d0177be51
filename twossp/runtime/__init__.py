"""Running sweeps: the driver (plan, claim, execute, store; the only writer of the database), the
executors (Ray, or in-process), the worker entry point that runs one run, model loading, the
preflight checks made from local files before any work, and ``twossp export`` (``export``).
Devices are named in ``twossp.device`` alone."""
