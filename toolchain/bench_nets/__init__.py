"""Model code of the bench suite, kept apart from the toolchain's own modules (see cnns.py)."""
