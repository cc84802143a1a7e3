"""The ``model`` section: which backbone a job loads (or builds from scratch) and how long its inputs are."""

from __future__ import annotations

from dataclasses import dataclass

from ffm.settings import option, require

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """The backbone: a bundled model, a local directory or a Hub id; or a random one of a given shape."""

    name: str = option(
        "minilm", "backbone: 'minilm' (the bundled pretrained MiniLM encoder), 'smollm2' (SmolLM2-135M-Instruct, "
        "a decoder), a local directory, or a Hub id; with from_scratch, where the tokenizer comes from"
    )
    init_from: str = option("", "a run directory whose last checkpoint's trainable state the model starts from: "
                            "an SFT run's adapter for DPO, a federated CLIP run for a prompt search (every node must "
                            "be able to read it)")
    max_length: int = option(64, "tokens per example (longer texts are truncated; language models: the context)")
    from_scratch: bool = option(False, "build a randomly initialized model of `architecture` instead of loading "
                                "weights")
    architecture: str = option("gpt2", "from_scratch: a transformers model type (gpt2, llama, bert, ...)")
    layers: int = option(2, "from_scratch: transformer layers")
    hidden_size: int = option(64, "from_scratch: width (the feed-forward layer is 4x)")
    heads: int = option(2, "from_scratch: attention heads (must divide hidden_size)")
    tokenizer: str = option("", "from_scratch: a fixed tokenizer no party's data shapes (bytes: one token per UTF-8 "
                            "byte); empty = model.name's own", choices=("", "bytes"))
    dropout: float = option(-1.0, "from_scratch: the probability of every dropout layer (-1 = the architecture's "
                            "default; nanoGPT's small models: 0)")

    def __post_init__(self) -> None:
        require(self.max_length >= 8, "model.max_length must be at least 8")
        require(self.layers >= 1 and self.heads >= 1, "model.layers and model.heads must be at least 1")
        require(self.hidden_size % self.heads == 0,
                f"model.hidden_size={self.hidden_size} must be a multiple of model.heads={self.heads}")
        require(not self.tokenizer or self.from_scratch, f"model.tokenizer={self.tokenizer} builds a new vocabulary: "
                "it needs model.from_scratch=true (a pretrained model keeps its own tokenizer)")
        require(self.dropout == -1.0 or 0.0 <= self.dropout < 1.0, "model.dropout must be -1 (default) or in [0, 1)")
