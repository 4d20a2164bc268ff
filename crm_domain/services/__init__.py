"""Domain services: take a Session and plain values, never commit."""
