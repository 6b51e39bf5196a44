"""Small peer servers the harness runs in their own processes."""
