"""The domain's pure values: routing's published formula, the config."""
