"""The package's version, for the root package and the telemetry's
instrumentation scope (pyproject.toml states the same for the build)."""

__version__ = "0.1.0"
