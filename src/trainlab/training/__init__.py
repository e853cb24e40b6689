"""Training: the loop, its callbacks, and a run's lifecycle (build, state, signals, resume)."""
