"""gate-middleware's benchmarks: ``python -m benchmarks`` (or ``./dev bench``)."""
