"""The project itself: lint, types, the import rules, builds and packaging."""
