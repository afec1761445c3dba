"""The `quiver` command: `quiver serve` runs the server, `quiver keys add` makes API keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sqlite3
import sys
from pathlib import Path

from quiver.server import config, logs
from quiver.server.app import ConfigError, QuiverServer
from quiver.server.auth.keys import (
    KeyConfigError,
    append_key,
    fingerprint,
    list_keys,
    revoke_keys,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quiver", description="Quiver: a self-hosted vector store with a gRPC contract."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the Quiver gRPC server. Every flag can also be set with the "
        "QUIVER_* environment variable named in its help.",
    )
    config.add_arguments(serve)
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    add = key_commands.add_parser(
        "add", help="append a new key for TENANT to FILE and print the key once"
    )
    add.add_argument("tenant")
    add.add_argument("--file", type=Path, required=True, help="the API keys file")
    listed = key_commands.add_parser(
        "list", help="list the keys in FILE: tenant and fingerprint (the keys are not stored)"
    )
    listed.add_argument("--file", type=Path, required=True, help="the API keys file")
    revoke = key_commands.add_parser(
        "revoke",
        help="remove a key (the key itself, or its fingerprint from 'keys list') or every key "
        "of --tenant from FILE; a running server notices within --reload-interval or on SIGHUP",
    )
    revoke.add_argument("key", nargs="?", default="", help="the key, or its fingerprint")
    revoke.add_argument("--tenant", default="", help="revoke every key of this tenant")
    revoke.add_argument("--file", type=Path, required=True, help="the API keys file")
    return parser


DATABASE_FILE = "quiver.sqlite3"
"""The database in the data directory (as QuiverServer opens it), named when it is damaged."""


async def _serve(settings: config.Settings) -> int:
    server = QuiverServer(settings)
    try:
        await server.start()
    except BaseException:
        with contextlib.suppress(Exception):  # the start's error is the one to report
            await server.stop(grace=0)  # closes the worker pool and storage
        raise
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    await stop.wait()
    await server.stop()
    return 0


def _keys(args: argparse.Namespace) -> int:
    if args.keys_command == "list":
        for entry in list_keys(args.file):
            print(f"{entry.tenant}\t{fingerprint(entry.digest)}")
        return 0
    if args.keys_command == "revoke":
        removed = revoke_keys(args.file, key_or_fingerprint=args.key, tenant=args.tenant)
        for entry in removed:
            print(f"revoked {entry.tenant}\t{fingerprint(entry.digest)}")
        return 0
    key = append_key(args.file, args.tenant)
    print(key)
    print(
        f"(added for tenant {args.tenant!r} to {args.file}; it is not shown again)",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "keys":
        try:
            return _keys(args)
        except KeyConfigError as exc:
            print(f"quiver keys {args.keys_command}: {exc}", file=sys.stderr)
            return 2
    settings = config.from_namespace(args)
    logs.configure(settings.log_level)
    try:
        return asyncio.run(_serve(settings))
    except (ConfigError, KeyConfigError) as exc:
        print(f"quiver serve: {exc}", file=sys.stderr)
        return 2
    except sqlite3.DatabaseError as exc:  # a damaged file, or not SQLite at all
        print(
            f"quiver serve: the database {settings.data_dir / DATABASE_FILE} is unusable "
            f"({exc}); restore it from a backup, or move it away to start with an empty one",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
