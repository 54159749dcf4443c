"""stream-agents."""
