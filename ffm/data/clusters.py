"""Controlled skew for data without labels: cluster texts by the bundled MiniLM's sentence embeddings, then
partition with Dirichlet over the clusters (none of the anchors offers non-IID splits of unlabelled text).

Embeddings are the mean of MiniLM's last hidden states over real tokens (its sentence-transformers pooling),
L2-normalized; k-means is scikit-learn's, seeded.
"""

from __future__ import annotations

import datasets
import numpy as np
import torch

__all__ = ["add_clusters", "embed_texts"]


@torch.inference_mode()
def embed_texts(texts: list[str], *, batch_size: int = 64, max_length: int = 64) -> np.ndarray:
    """(N, 384) unit-norm sentence embeddings from the bundled pretrained MiniLM."""
    from transformers import AutoModel, AutoTokenizer

    from ffm.models.backbone import resolve_model_path

    path = resolve_model_path("minilm")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # (B, T, 384)
        mask = enc["attention_mask"][..., None].float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out).numpy()


def add_clusters(ds: datasets.Dataset, k: int, seed: int) -> datasets.Dataset:
    """``ds`` with a ``cluster`` column: the k-means cluster of each text's embedding."""
    from sklearn.cluster import KMeans

    embeddings = embed_texts(list(ds["text"]))
    clusters = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(embeddings)
    return ds.add_column("cluster", [int(c) for c in clusters])
