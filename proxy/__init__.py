"""The request path and the composition root (the CLI)."""
