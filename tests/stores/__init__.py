"""The stores: one contract suite on every store, and each backend under faults."""
