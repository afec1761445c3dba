"""The `local:` embedder with the packaged all-MiniLM-L6-v2 (int8 ONNX): its vectors against
fp32 reference vectors (tests/data/minilm_reference.json, made by
scripts/minilm_reference.py), the long-text policy, --models-dir, and a `local:` store end to
end through the gRPC server."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from quiver.server.core.embedder_choice import EmbedderChoice
from quiver.server.core.errors import FailedPrecondition, InvalidArgument
from quiver.server.embedders import local_models
from quiver.server.embedders.base import embed_queries
from quiver.server.embedders.local_models import LocalModelError, find_model
from quiver.server.embedders.local_onnx import LocalOnnxEmbedder, local_threads
from quiver.server.embedders.model_names import BadModelName, parse_model_name
from quiver.server.embedders.registry import EmbedderSpec, make_embedder
from quiver.v1 import vector_stores_pb2 as pb

from tests.conftest import Running
from tests.rpc_helpers import rpc_error, upload, violated_fields
from tests.test_search import search, start_batch, watch_to_terminal

MINILM = "all-minilm-l6-v2"
REFERENCE = Path(__file__).parent / "data" / "minilm_reference.json"


@cache
def minilm(long_text: str = "windows") -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(replace(find_model(MINILM, None), long_text=long_text), threads=1)


def test_packaged_model_matches_the_fp32_reference() -> None:
    reference = json.loads(REFERENCE.read_text())
    # The reference reads the first 256 word pieces, as sentence-transformers does.
    embedder = minilm("truncate")
    texts = [s["text"] for s in reference["sentences"]]
    expected = np.asarray([s["vector"] for s in reference["sentences"]])
    cosines = (embedder.embed(texts) * expected).sum(axis=1)
    assert cosines.mean() >= 0.999, cosines
    assert cosines.min() >= 0.99, cosines


def test_registry_builds_the_packaged_model() -> None:
    embedder = make_embedder(EmbedderSpec(f"local:{MINILM}", 384, threads=1))
    assert embedder.model == f"local:{MINILM}" and embedder.dimensions == 384
    vectors = embedder.embed(["a cat", "a kitten", "tax law"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


FILLER = " ".join(
    f"Block {i} of the journal records metadata updates before the file system commits them."
    for i in range(25)
)
TAIL = "For the paella, fry saffron rice with garlic, prawns and olive oil in a wide pan."


def test_windows_read_what_truncation_cuts() -> None:
    windows, truncate = minilm("windows"), minilm("truncate")
    assert windows.word_pieces(FILLER) > 300  # the tail is past the 256 the model reads
    short = ["a short sentence fits one window"]
    assert np.allclose(windows.embed(short), truncate.embed(short), atol=1e-6)

    long_text = f"{FILLER} {TAIL}"
    other_tail = f"{FILLER} The committee voted to postpone the budget until spring."
    # Truncation never sees the tail: two texts that differ there get the same vector.
    assert np.allclose(truncate.embed([long_text]), truncate.embed([other_tail]), atol=1e-6)
    # Windows do: the cooking query is closer to the text whose tail is about cooking.
    query = windows.embed_queries(["how to cook a Spanish rice dish with seafood"])[0]
    with_tail, without = windows.embed([long_text, other_tail])
    assert query @ with_tail > query @ without + 0.02
    assert query @ with_tail > query @ truncate.embed([long_text])[0] + 0.02


def test_windows_pool_weighted_by_word_pieces() -> None:
    """The windowed vector is the word-piece-weighted mean of the windows' own vectors."""
    embedder = minilm("windows")
    room = embedder.spec.max_tokens - 2
    ids = embedder._tokenizer.encode(FILLER, add_special_tokens=False).ids
    parts = [ids[i : i + room] for i in range(0, len(ids), room)]
    assert len(parts) >= 2
    pooled = embedder._run([[101, *p, 102] for p in parts])
    expected = (pooled * np.asarray([[len(p) + 2] for p in parts])).sum(axis=0)
    expected /= np.linalg.norm(expected)
    assert np.allclose(embedder.embed([FILLER])[0], expected, atol=1e-5)


def test_model_name_grammar() -> None:
    assert parse_model_name(f"local:{MINILM}") == ("local", MINILM)
    for bad in ("local:", "local:../etc", "local:a/b", "local: x", "local:" + "a" * 65):
        with pytest.raises(BadModelName):
            parse_model_name(bad)


def test_models_dir_is_searched_first(tmp_path: Path) -> None:
    packaged = find_model(MINILM, None)
    own = tmp_path / "minilm-e5-style"
    own.mkdir()
    (own / "model.onnx").symlink_to(packaged.onnx_path)
    (own / "tokenizer.json").symlink_to(packaged.tokenizer_path)
    config: dict[str, Any] = {
        "dimensions": 384,
        "max_tokens": 128,
        "long_text": "truncate",
        "query_prefix": "query: ",
        "passage_prefix": "passage: ",
    }
    (own / "model.json").write_text(json.dumps(config))
    model = find_model("minilm-e5-style", tmp_path)
    assert model.onnx_path == own / "model.onnx" and model.query_prefix == "query: "
    embedder = make_embedder(
        EmbedderSpec("local:minilm-e5-style", 384, models_dir=str(tmp_path), threads=1)
    )
    plain = minilm("windows")
    assert np.allclose(
        embedder.embed(["a dog"]), plain.embed(["passage: a dog"]), atol=1e-6
    ) and np.allclose(embed_queries(embedder, ["a dog"]), plain.embed(["query: a dog"]), atol=1e-6)
    (own / "model.json").write_text(json.dumps({**config, "pooling": "max"}))
    with pytest.raises(LocalModelError, match="pooling must be one of mean, cls"):
        find_model("minilm-e5-style", tmp_path)
    with pytest.raises(LocalModelError, match="no local model 'absent'"):
        find_model("absent", tmp_path)


def test_store_creation_checks_the_local_model(monkeypatch: pytest.MonkeyPatch) -> None:
    choice = EmbedderChoice(512, "")
    assert choice.resolve(f"local:{MINILM}", 0) == (f"local:{MINILM}", 384, True)
    with pytest.raises(InvalidArgument) as bad_dims:
        choice.resolve(f"local:{MINILM}", 512)
    assert [v.field for v in bad_dims.value.violations] == ["embedding_dimensions"]
    with pytest.raises(InvalidArgument) as missing:
        choice.resolve("local:absent", 0)
    assert [v.field for v in missing.value.violations] == ["embedding_model"]
    # A server without the `local` extra: a clear FAILED_PRECONDITION naming the field.
    monkeypatch.setattr(local_models, "RUNTIME_MODULES", ("quiver_no_such_runtime",))
    with pytest.raises(FailedPrecondition, match="embedding_model 'local:all-minilm-l6-v2'"):
        choice.resolve(f"local:{MINILM}", 0)


def test_threads_share_the_cores() -> None:
    assert local_threads(3, 8) == 3
    assert local_threads(0, 10**6) == 1
    assert local_threads(0, 1) >= 1


DOCS = {
    "bread.txt": "How to bake sourdough bread: mix flour, water and starter, let the dough "
    "rise overnight, then bake it in a very hot oven.",
    "password.txt": "Resetting your account password: open the settings page, choose "
    "security, and follow the link that arrives by email.",
    "cells.txt": "The mitochondria produce most of the chemical energy that a cell needs.",
    "trains.txt": "The night train leaves the central station at eleven and reaches the "
    "coast by dawn.",
}
PARAPHRASE = "I forgot my login credentials"


async def test_local_store_finds_a_paraphrase_end_to_end(running: Running) -> None:
    alice = running.alice
    words = set(PARAPHRASE.lower().split())
    assert not words & set(DOCS["password.txt"].lower().replace(",", " ").split())
    created = await alice.stores.CreateVectorStore(
        pb.CreateVectorStoreRequest(name="minilm", embedding_model=f"local:{MINILM}"),
        metadata=alice.metadata,
    )
    store = created.vector_store
    assert store.embedding_model == f"local:{MINILM}" and store.embedding_dimensions == 384
    ids = {(await upload(alice, name, text.encode())).id: name for name, text in DOCS.items()}
    batch = await start_batch(alice, store.id, list(ids), [{} for _ in ids])
    done = await watch_to_terminal(alice, store.id, batch)
    assert done.file_counts.completed == len(DOCS), done
    for ranker in ("none", "auto"):
        reply = await search(alice, store.id, PARAPHRASE, ranker=ranker)
        assert ids[reply.data[0].file_id] == "password.txt", (ranker, reply)


async def test_local_store_with_an_unknown_model_is_refused(running: Running) -> None:
    alice = running.alice
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alice.stores.CreateVectorStore(
            pb.CreateVectorStoreRequest(name="x", embedding_model="local:no-such-model"),
            metadata=alice.metadata,
        )
    assert rpc_error(caught.value).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(caught.value) == ["embedding_model"]


async def test_a_server_without_the_local_extra_refuses_local_stores(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_models, "RUNTIME_MODULES", ("quiver_no_such_runtime",))
    alice = running.alice
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await alice.stores.CreateVectorStore(
            pb.CreateVectorStoreRequest(name="x", embedding_model=f"local:{MINILM}"),
            metadata=alice.metadata,
        )
    error = rpc_error(caught.value)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "embedding_model" in (error.details() or "")
    assert "quiver-vectorstore[local]" in (error.details() or "")
