"""peftds."""
