"""The judge: its tests, checks and error rates."""
