"""Ingest pipeline pieces: document parsing (bytes to text) and token chunking."""
