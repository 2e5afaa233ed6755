"""The gate: transitions, the plan, webhooks, concurrency, bad input."""
