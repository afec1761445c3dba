"""The ``--ingest`` setting: where files are parsed, chunked and embedded.

- ``local`` (the default): the server's own worker processes (``ingest/pool.py``);
- ``ray:auto``: Ray tasks on a local Ray, attached if this process already has one, else
  started by ``ray.init()`` (which itself attaches to ``RAY_ADDRESS`` or a Ray already
  running on this machine, or starts one);
- ``ray://HOST:PORT``: Ray tasks on an existing cluster through its Ray Client server
  (``ray start --head --ray-client-server-port=PORT``; 10001 by default).

Parsing it needs no Ray: only the executor (``ingest/ray_executor.py``) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"
RAY_AUTO = "ray:auto"
RAY_CLIENT_PREFIX = "ray://"


@dataclass(frozen=True)
class IngestChoice:
    on_ray: bool
    address: str
    """For Ray: "auto" or the ``ray://HOST:PORT`` address; "" for the local pool."""


def parse_ingest(value: str) -> IngestChoice:
    """ValueError naming ``--ingest`` for anything but the three forms above."""
    text = value.strip()
    if text == LOCAL:
        return IngestChoice(on_ray=False, address="")
    if text == RAY_AUTO:
        return IngestChoice(on_ray=True, address="auto")
    if text.startswith(RAY_CLIENT_PREFIX):
        host, sep, port = text[len(RAY_CLIENT_PREFIX) :].rpartition(":")
        if sep and host and port.isdigit() and 0 < int(port) <= 65535 and "/" not in host:
            return IngestChoice(on_ray=True, address=text)
    raise ValueError(
        f"--ingest must be 'local', 'ray:auto' or 'ray://HOST:PORT' (a Ray Client address), "
        f"not {value[:80]!r}"
    )
