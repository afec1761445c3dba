"""The Quiver Python client."""
