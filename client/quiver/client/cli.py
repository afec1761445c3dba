"""The ``quiver`` command line: the server (``serve``, ``keys``) and a client for every
resource, with a live progress bar for batches.

Exit codes: 0 done; 1 a batch ended with files failed or cancelled (or the batch itself did
not complete); 2 bad usage; 3 the server answered with an error; 4 the server could not be
reached; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from quiver.client._settings import DEFAULT_TARGET
from quiver.client._sync import Client
from quiver.client.errors import QuiverError, UnavailableError
from quiver.client.types import BatchUpdate, ChunkingStrategy, ExpiresAfter, FileBatch, LastError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

OK, BATCH_INCOMPLETE, USAGE, API_ERROR, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 4, 130
SERVER_COMMANDS = ("serve", "keys")

out = Console()
err = Console(stderr=True)


def _usage(message: str) -> SystemExit:
    """A usage error: the message on stderr, exit code 2 (like argparse's own)."""
    err.print(message, soft_wrap=True, markup=False, highlight=False)
    return SystemExit(USAGE)


def _kv(pairs: Sequence[str] | None, *, typed: bool) -> dict[str, Any]:
    """k=v pairs; with ``typed``, values that parse as JSON numbers or booleans are those."""
    result: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise _usage(f"quiver: expected KEY=VALUE, got {pair!r}")
        parsed: Any = value
        if typed:
            try:
                decoded = json.loads(value)
                if isinstance(decoded, bool | int | float):
                    parsed = decoded
            except json.JSONDecodeError:
                pass
        result[key] = parsed
    return result


def _chunking(args: argparse.Namespace) -> ChunkingStrategy | None:
    if args.chunk_size is None:
        return None
    return ChunkingStrategy.static(args.chunk_size, args.chunk_overlap)


def _json(value: Any) -> None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [
            dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
            for v in value
        ]
    print(json.dumps(value, indent=2, default=str))


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Cells are data, not rich markup: a filename or query with [brackets] prints as is."""
    table = Table(title=escape(title))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out.print(table)


def _show(args: argparse.Namespace, value: Any) -> None:
    if args.json:
        _json(value)
        return
    data = (
        dataclasses.asdict(value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type)
        else value
    )
    _table("", ("field", "value"), data.items())


# -- files ------------------------------------------------------------------------------------


def files_command(client: Client, args: argparse.Namespace) -> int:
    if args.action == "upload":
        uploaded = [client.files.upload(path, purpose=args.purpose) for path in args.paths]
        if args.json:
            _json(uploaded)
        else:
            _table(
                "uploaded",
                ("id", "filename", "bytes"),
                ((f.id, f.filename, f.bytes) for f in uploaded),
            )
        return OK
    if args.action == "list":
        files = list(client.files.list())
        if args.json:
            _json(files)
        else:
            _table(
                "files",
                ("id", "filename", "bytes", "purpose", "created_at"),
                ((f.id, f.filename, f.bytes, f.purpose, f.created_at) for f in files),
            )
        return OK
    if args.action == "get":
        _show(args, client.files.retrieve(args.file_id))
        return OK
    _show(args, client.files.delete(args.file_id))
    return OK


# -- stores -----------------------------------------------------------------------------------


def stores_command(client: Client, args: argparse.Namespace) -> int:
    if args.action == "create":
        store = client.vector_stores.create(
            name=args.name,
            metadata=_kv(args.metadata, typed=False),
            expires_after=ExpiresAfter(args.expires_days) if args.expires_days else None,
            embedding_model=args.embedding_model,
            embedding_dimensions=args.dimensions,
        )
        _show(args, store)
        return OK
    if args.action == "list":
        stores = list(client.vector_stores.list())
        if args.json:
            _json(stores)
        else:
            _table(
                "vector stores",
                ("id", "name", "status", "files", "usage_bytes"),
                ((s.id, s.name, s.status, s.file_counts.total, s.usage_bytes) for s in stores),
            )
        return OK
    if args.action == "get":
        _show(args, client.vector_stores.retrieve(args.vector_store_id))
        return OK
    _show(args, client.vector_stores.delete(args.vector_store_id))
    return OK


# -- batches ----------------------------------------------------------------------------------


def _filename(client: Client, file_id: str, names: dict[str, str]) -> str:
    if file_id not in names:
        try:
            names[file_id] = client.files.retrieve(file_id).filename
        except QuiverError:
            names[file_id] = ""
    return names[file_id]


def _follow(
    client: Client, batch: FileBatch, *, as_json: bool, names: dict[str, str] | None = None
) -> int:
    """Watches a batch to its end with a progress bar (or a line per update when not on a
    terminal), then prints a summary naming each file that did not complete and why.
    ``names`` maps file ids to filenames already known; others are looked up."""
    names = dict(names or {})
    failures: dict[str, LastError | None] = {}
    final = batch

    def note(update: BatchUpdate) -> None:
        for f in update.files:
            if f.status in ("failed", "cancelled"):
                failures[f.file_id] = f.last_error

    updates = client.vector_stores.file_batches.watch(
        batch.id, vector_store_id=batch.vector_store_id
    )
    if as_json:
        for update in updates:
            note(update)
            final = update.batch
            print(json.dumps(dataclasses.asdict(update), default=str), flush=True)
        return _exit_for(final)
    if out.is_terminal:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=out) as progress:
            task = progress.add_task(batch.id, total=batch.file_counts.total or None, detail="")
            for update in updates:
                note(update)
                final = update.batch
                c = final.file_counts
                progress.update(
                    task,
                    total=c.total,
                    completed=c.completed + c.failed + c.cancelled,
                    detail=f"{c.completed} completed, {c.failed} failed, "
                    f"{c.in_progress} in progress",
                )
    else:
        for update in updates:
            note(update)
            final = update.batch
            c = final.file_counts
            print(
                f"sequence={update.sequence} status={final.status} completed={c.completed} "
                f"failed={c.failed} cancelled={c.cancelled} in_progress={c.in_progress} "
                f"total={c.total}",
                flush=True,
            )
    c = final.file_counts
    out.print(  # one line, whatever the width: scripts grep it
        f"batch {final.id} {final.status}: {c.completed} completed, {c.failed} failed, "
        f"{c.cancelled} cancelled of {c.total}",
        soft_wrap=True,
        highlight=False,
    )
    if failures:
        rows = [
            (fid, _filename(client, fid, names), f"{e.code}: {e.message}" if e else "cancelled")
            for fid, e in failures.items()
        ]
        if out.is_terminal:
            _table("files that did not complete", ("file", "filename", "reason"), rows)
        else:
            print("files that did not complete:")
            for fid, name, reason in rows:
                print(f"  {fid} {name or '?'}: {reason}", flush=True)
    return _exit_for(final)


def _exit_for(batch: FileBatch) -> int:
    c = batch.file_counts
    return OK if batch.status == "completed" and c.completed == c.total else BATCH_INCOMPLETE


def batches_command(client: Client, args: argparse.Namespace) -> int:
    batches = client.vector_stores.file_batches
    if args.action == "create":
        ids = list(args.file_id or [])
        names: dict[str, str] = {}
        for path in args.paths:
            uploaded = client.files.upload(path)
            ids.append(uploaded.id)
            names[uploaded.id] = uploaded.filename
        if not ids:
            raise _usage("quiver batches create: give file paths and/or --file-id")
        batch = batches.create(
            vector_store_id=args.vector_store_id,
            file_ids=ids,
            attributes=_kv(args.attr, typed=True),
            chunking_strategy=_chunking(args),
        )
        if args.watch:
            return _follow(client, batch, as_json=args.json, names=names)
        _show(args, batch)
        return OK
    if args.action == "watch":
        batch = batches.retrieve(args.batch_id, vector_store_id=args.vector_store_id)
        return _follow(client, batch, as_json=args.json)
    if args.action == "cancel":
        _show(args, batches.cancel(args.batch_id, vector_store_id=args.vector_store_id))
        return OK
    files = list(
        batches.list_files(args.batch_id, vector_store_id=args.vector_store_id, status=args.status)
    )
    if args.json:
        _json(files)
    else:
        _table(
            "batch files",
            ("file", "status", "error"),
            (
                (
                    f.id,
                    f.status,
                    f"{f.last_error.code}: {f.last_error.message}" if f.last_error else "",
                )
                for f in files
            ),
        )
    return OK


# -- search -----------------------------------------------------------------------------------


def search_command(client: Client, args: argparse.Namespace) -> int:
    response = client.vector_stores.search(
        args.vector_store_id,
        query=args.query,
        max_num_results=args.max_results,
        filters=json.loads(args.filter) if args.filter else None,
        ranker=args.ranker,
        score_threshold=args.threshold,
    )
    if args.json:
        _json(response)
        return OK
    _table(
        f"results for {' / '.join(response.search_query)}",
        ("score", "file", "text"),
        ((f"{r.score:.3f}", r.filename, r.text[:160].replace("\n", " ")) for r in response.data),
    )
    return OK


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quiver",
        description="Quiver: a self-hosted vector store with a gRPC contract.",
        epilog="Server: 'quiver serve --help', 'quiver keys add --help'. "
        "Exit codes: 0 ok, 1 batch incomplete, 2 usage, 3 API error, 4 unreachable.",
    )
    parser.add_argument("--target", help="host:port of the server (env QUIVER_TARGET)")
    parser.add_argument("--api-key", help="API key (env QUIVER_API_KEY)")
    parser.add_argument("--on-behalf-of", help="narrow to an end user (env QUIVER_ON_BEHALF_OF)")
    parser.add_argument("--tls", action="store_true", help="use TLS (the system's CA roots)")
    parser.add_argument("--tls-ca", help="PEM CA to trust; implies --tls (env QUIVER_TLS_CA)")
    parser.add_argument(
        "--tls-cert", help="PEM client certificate for mTLS; implies --tls (env QUIVER_TLS_CERT)"
    )
    parser.add_argument("--tls-key", help="PEM key of --tls-cert (env QUIVER_TLS_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-call deadline, seconds")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the server (see quiver serve --help)", add_help=False)
    commands.add_parser("keys", help="manage API keys (see quiver keys add --help)", add_help=False)

    files = commands.add_parser("files", help="upload, list, get, delete files")
    fa = files.add_subparsers(dest="action", required=True)
    up = fa.add_parser("upload", parents=[common], help="upload files")
    up.add_argument("paths", nargs="+")
    up.add_argument("--purpose", default="assistants")
    fa.add_parser("list", parents=[common], help="list files")
    for name in ("get", "delete"):
        sub = fa.add_parser(name, parents=[common], help=f"{name} a file")
        sub.add_argument("file_id")

    stores = commands.add_parser("stores", help="create, list, get, delete vector stores")
    sa = stores.add_subparsers(dest="action", required=True)
    create = sa.add_parser("create", parents=[common], help="create a store")
    create.add_argument("--name", default="")
    create.add_argument("--metadata", nargs="*", metavar="KEY=VALUE")
    create.add_argument("--expires-days", type=int, default=0)
    create.add_argument("--embedding-model", default="", help="hash (default) or openai:<model>")
    create.add_argument("--dimensions", type=int, default=0)
    sa.add_parser("list", parents=[common], help="list stores")
    for name in ("get", "delete"):
        sub = sa.add_parser(name, parents=[common], help=f"{name} a store")
        sub.add_argument("vector_store_id")

    batches = commands.add_parser("batches", help="create, watch, cancel batches; list their files")
    ba = batches.add_subparsers(dest="action", required=True)
    bc = ba.add_parser("create", parents=[common], help="upload paths and/or attach file ids")
    bc.add_argument("vector_store_id")
    bc.add_argument("paths", nargs="*", help="files to upload and attach")
    bc.add_argument("--file-id", action="append", help="an uploaded file to attach (repeatable)")
    bc.add_argument("--attr", nargs="*", metavar="KEY=VALUE", help="attributes for every file")
    bc.add_argument("--chunk-size", type=int, help="static chunking: tokens per chunk")
    bc.add_argument("--chunk-overlap", type=int, default=0, help="static chunking: overlap")
    bc.add_argument("--watch", action="store_true", help="follow it live until it ends")
    for name in ("watch", "cancel", "files"):
        sub = ba.add_parser(name, parents=[common], help=f"{name} a batch")
        sub.add_argument("vector_store_id")
        sub.add_argument("batch_id")
        if name == "files":
            sub.add_argument(
                "--status", choices=("in_progress", "completed", "cancelled", "failed")
            )

    search = commands.add_parser("search", parents=[common], help="search a store")
    search.add_argument("vector_store_id")
    search.add_argument("query", nargs="+", help="one or more queries, searched together")
    search.add_argument("--max-results", type=int)
    search.add_argument(
        "--filter", help='OpenAI-style JSON, e.g. \'{"type":"eq","key":"k","value":1}\''
    )
    search.add_argument("--ranker", help="auto (default) or none")
    search.add_argument("--threshold", type=float)
    return parser


HANDLERS = {
    "files": files_command,
    "stores": stores_command,
    "batches": batches_command,
    "search": search_command,
}


def _target(args: argparse.Namespace) -> str:
    return str(args.target or os.environ.get("QUIVER_TARGET") or DEFAULT_TARGET)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SERVER_COMMANDS:
        from quiver.server import cli as server_cli  # only the server needs the server

        return server_cli.main(argv)
    args = build_parser().parse_args(argv)
    try:
        with Client(
            target=args.target,
            api_key=args.api_key,
            on_behalf_of=args.on_behalf_of,
            tls=args.tls or None,
            root_certificates=args.tls_ca,
            certificate_chain=args.tls_cert,
            private_key=args.tls_key,
            timeout=args.timeout,
        ) as client:
            return HANDLERS[args.command](client, args)
    except UnavailableError as exc:
        err.print(
            f"[red]quiver: cannot reach the server at {escape(_target(args))}: "
            f"{escape(exc.message)}",
            soft_wrap=True,
        )
        return UNREACHABLE
    except QuiverError as exc:
        err.print(f"[red]quiver: {escape(str(exc))}", soft_wrap=True)
        for violation in exc.field_violations:
            err.print(f"  {violation.field}: {violation.description}", soft_wrap=True, markup=False)
        return API_ERROR
    except (OSError, ValueError) as exc:  # a path cannot be read; a half TLS setting
        err.print(f"quiver: {exc}", soft_wrap=True, markup=False, highlight=False)
        return USAGE
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
