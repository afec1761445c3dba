"""API keys: how they are made, stored (hashed) and checked."""
