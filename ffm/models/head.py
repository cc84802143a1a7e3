"""Which tensors of a state are a classification head's per-class rows.

Rows are the first dimension of the head's weight and bias (``classifier`` in BERT/ViT, ``score`` in
decoders): a class-incremental stream grows them, and a per-class head aggregation averages each row over the
parties that hold its class.
"""

from __future__ import annotations

import torch

__all__ = ["HEAD_NAMES", "head_keys"]

HEAD_NAMES = ("classifier", "score")


def head_keys(state: dict[str, torch.Tensor], num_labels: int) -> list[str]:
    """Keys of the head's per-class tensors (first dimension = ``num_labels``)."""
    return [k for k, v in state.items()
            if any(name in k for name in HEAD_NAMES) and v.ndim >= 1 and v.shape[0] == num_labels]
