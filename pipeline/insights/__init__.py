"""Per-message categories and per-thread insights."""
