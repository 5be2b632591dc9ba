"""The request path: tagging, routing, forwarding, mirroring, recording (docs/ARCHITECTURE.md)."""
