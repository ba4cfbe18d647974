"""t-SNE of a layer's mean hidden state per query (paper §4.1, Fig. 5a/b).

The paper samples 100 queries per source (Code Alpaca, GSM8K RFT, ShareGPT), takes the hidden
states of the middle layer (15th of LLaMA-13B) and plots t-SNE for the base and the DMT model.
Here: the same sample ids for both models (the first ``n`` of each pool's seeded sampling order),
the user query rendered with the run's template as a generation prompt, hidden states of
``layer`` averaged over the query's own tokens (not the shared template), standardised per
dimension, and scikit-learn's t-SNE per model. A model with fewer
layers than ``layer`` uses its middle layer, and the output says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from pydantic import BaseModel

from sftmix.data.compose import sampling_order
from sftmix.data.sources import load_pool
from sftmix.io import atomic_write, read_record, write_json
from sftmix.models import load_model, load_tokenizer
from sftmix.templates import generation_prompt


class Query(NamedTuple):
    """A sampled conversation's first user message, and where it came from."""

    id: str
    source: str
    text: str


class ModelPoints(BaseModel):
    """One model's t-SNE: the checkpoint, the layer whose states were used, a 2-D point per query."""

    path: str
    layer: int
    xy: list[list[float]]


class TsnePoints(BaseModel):
    """``tsne.json``: the queries (by id, in order) and each model's points for them."""

    sources: list[str]
    n_per_source: int
    requested_layer: int
    ids: list[str]
    models: dict[str, ModelPoints] = {}


def sample_queries(sources: list[str], n: int, seed: int, data_dir: str | None, cfgs: dict | None = None) -> list[Query]:
    """``n`` user queries per source (sampled with ``seed``) for the t-SNE figure."""
    out = []
    for name in sources:
        pool = load_pool(name, (cfgs or {}).get(name), data_dir)
        for c in sampling_order(pool.conversations, seed)[:n]:
            out.append(Query(c.id, name, next(m["content"] for m in c.messages if m["role"] == "user")))
    return out


@torch.no_grad()
def mean_hidden(model_path: str, queries: list[Query], layer: int, template: str, max_length: int = 256) -> tuple[np.ndarray, int]:
    """Mean hidden state of ``layer`` over each query's tokens: (queries x hidden) and the layer used."""
    tok, model = load_tokenizer(model_path), load_model(model_path)
    model.eval()
    n_layers = model.config.num_hidden_layers
    used = layer if 0 < layer <= n_layers else n_layers // 2
    vecs = []
    for q in queries:
        text = generation_prompt([{"role": "user", "content": q.text}], template, tok)
        enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")[0]
        hs = model(**enc, output_hidden_states=True).hidden_states[used][0].float()  # index 0 is the embeddings
        # Average over the query's own tokens: the template's shared system prompt would otherwise
        # dominate every mean and collapse the picture onto one direction.
        start = text.find(q.text)
        keep = [(a >= start and b <= start + len(q.text) and b > a) for a, b in offsets.tolist()] if start >= 0 else []
        sel = hs[torch.tensor(keep)] if any(keep) else hs
        vecs.append(sel.mean(0).numpy())
    return np.stack(vecs), used


def tsne(models: dict[str, str], sources: list[str], out_dir: str | Path, n: int = 100, layer: int = 15,
         template: str = "vicuna", seed: int = 0, data_dir: str | None = None, cfgs: dict | None = None) -> Path:
    """Fit t-SNE per model on the same queries; write ``tsne.png`` and ``tsne.json``."""
    # imported here: matplotlib is heavy and only needed to draw figures
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queries = sample_queries(sources, n, seed, data_dir, cfgs)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.4), squeeze=False)
    doc = TsnePoints(sources=sources, n_per_source=n, requested_layer=layer, ids=[q.id for q in queries])
    for ax, (label, path) in zip(axes[0], models.items()):
        x, used = mean_hidden(path, queries, layer, template)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)  # standardise: a few outlier dimensions dominate raw LLM states
        perplexity = max(2.0, min(30.0, (len(queries) - 1) / 3))
        xy = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(x)
        doc.models[label] = ModelPoints(path=path, layer=used, xy=xy.round(4).tolist())
        for src in sources:
            idx = [i for i, q in enumerate(queries) if q.source == src]
            ax.scatter(xy[idx, 0], xy[idx, 1], s=10, label=src)
        ax.set_title(f"{label} (layer {used})")
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(out / "tsne.png", "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    write_json(out / "tsne.json", doc.model_dump(mode="json"))
    return out / "tsne.png"


def load_points(path: str | Path) -> TsnePoints:
    """Read back the points ``tsne`` wrote (a damaged file is an error naming it)."""
    return read_record(path, TsnePoints)
