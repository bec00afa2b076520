"""The speed layer: the real-time half of the Lambda architecture (DESIGN.md)."""
