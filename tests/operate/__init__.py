"""The operator's tools: the admin API, the dashboard, the command line."""
