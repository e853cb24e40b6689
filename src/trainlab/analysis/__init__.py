"""Analysis: what a trained model gets wrong, how runs differ, and the files that show it."""
