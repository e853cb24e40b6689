"""The store: what trainlab keeps on disk (atomic writes, checkpoints and their manifest, the run folder)."""
