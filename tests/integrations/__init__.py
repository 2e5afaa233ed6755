"""The adapters: one behaviour suite on every framework, OpenFeature."""
