"""API keys (how they are made, stored hashed and checked) and authenticate(): who is calling."""
