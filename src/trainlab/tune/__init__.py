"""Tuning: sweeps (trials as ordinary runs, the study beside them) and ready-made experiments."""
