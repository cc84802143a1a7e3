"""Image-text contrastive learning (CLIP style): symmetric InfoNCE on (image, caption) pairs, and zero-shot
classification by caption prompts as the primary metric.

The model is transformers' ``VisionTextDualEncoderModel``: a ViT vision tower built from the config
(``model.architecture`` / ``layers`` / ``hidden_size`` / ``heads`` with the task's image size) and the text tower
``model.name`` (the bundled pretrained MiniLM by default). ``task.freeze_text`` keeps the text tower frozen,
LiT-style (Zhai et al. 2022): only the vision tower and the projections train and travel. Captions come from
the class names through ``task.caption`` ("a photo of the digit three").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import datasets
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    VisionTextDualEncoderConfig,
    VisionTextDualEncoderModel,
)

from ffm.errors import ConfigError
from ffm.models.backbone import load_pretrained
from ffm.models.config import ModelConfig
from ffm.settings import option, require
from ffm.tasks.base import Task, TaskConfig
from ffm.tasks.examples import Examples, batches
from ffm.tasks.image_classification import image_tensor

__all__ = ["ImageTextContrastive", "ImageTextContrastiveConfig"]


@dataclass
class ImageTextContrastiveConfig(TaskConfig):
    """The image-text task's keys: captions, image shape, the shared embedding."""

    name: str = "image_text_contrastive"
    caption: str = option("a photo of the digit {}", "caption of an image, from its class name ({} = the name)")
    image_size: int = option(28, "images are resized to image_size x image_size")
    patch_size: int = option(7, "the vision tower's patch size (must divide image_size)")
    channels: int = option(1, "1 (grey) or 3 (RGB)")
    projection_dim: int = option(128, "width of the shared image-text embedding")
    freeze_text: bool = option(True, "keep the pretrained text tower frozen (LiT): it neither trains nor travels")

    def __post_init__(self) -> None:
        require(self.image_size % self.patch_size == 0, "task.patch_size must divide task.image_size")
        require("{}" in self.caption, "task.caption must hold {} where the class name goes")


class _MeanOfTokens(nn.Module):
    """Sentence embedding as the mean of the text tower's token states (MiniLM's own pooling). BERT's pooler
    (tanh of a dense layer on [CLS]) is untrained in sentence encoders and maps every caption to one vector."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        return hidden_states.mean(dim=1)


class _FirstToken(nn.Module):
    """Image embedding as the [CLS] state after the final LayerNorm, as CLIP's vision tower does (no tanh)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, H)
        return hidden_states[:, 0]


class ImageTextContrastive(Task):
    """CLIP-style training of a ViT against a (frozen) text tower; zero-shot accuracy."""

    config = ImageTextContrastiveConfig
    columns = ("image", "label")
    primary_metric = "accuracy"  # zero-shot: the caption whose embedding is nearest the image's
    higher_is_better = True
    prompt_slot = "{}"

    def __init__(self, cfg: ImageTextContrastiveConfig) -> None:
        super().__init__(cfg)
        self.prompts: dict[str, torch.Tensor] = {}
        self.label_names: list[str] = []
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.with_loss = True  # a prompt search scoring accuracy skips the contrastive loss (a text forward per image)
        self.frozen_prefixes = ("text_model.",) if cfg.freeze_text else ()

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase, seed: int
    ) -> PreTrainedModel:
        text = load_pretrained(AutoModel, model, seed)
        vision_config = AutoConfig.for_model(
            model.architecture, image_size=self.cfg.image_size, patch_size=self.cfg.patch_size,
            num_channels=self.cfg.channels, hidden_size=model.hidden_size, num_hidden_layers=model.layers,
            num_attention_heads=model.heads, intermediate_size=4 * model.hidden_size,
        )
        config = VisionTextDualEncoderConfig.from_vision_text_configs(
            vision_config, text.config, projection_dim=self.cfg.projection_dim
        )
        torch.manual_seed(seed)
        vision = AutoModel.from_config(vision_config)
        vision.pooler, text.pooler = _FirstToken(), _MeanOfTokens()  # see the two classes above
        self.label_names, self._tokenizer = list(label_names), tokenizer
        self.prompts = dict(tokenizer([self.cfg.caption.format(n) for n in label_names], padding=True,
                                      return_tensors="pt"))
        return VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text).eval()

    @property
    def prompt_template(self) -> str:
        """The caption template a discrete prompt search starts from (mode=prompt_search)."""
        return self.cfg.caption

    def words(self) -> list[str]:
        """The class names the captions are built from."""
        return list(self.label_names)

    def with_prompt(self, template: str, words: list[str]) -> ImageTextContrastive:
        """The same task zero-shot classifying with another caption template and class names."""
        if "{}" not in template or len(words) != len(self.label_names):
            raise ConfigError(f"a caption candidate needs {{}} and {len(self.label_names)} class names; got "
                              f"{template!r} with {words}")
        task = ImageTextContrastive(dataclasses.replace(self.cfg, caption=template))
        task.label_names, task._tokenizer, task.frozen_prefixes = list(words), self._tokenizer, self.frozen_prefixes
        task.prompts = dict(self._tokenizer([template.format(n) for n in words], padding=True, return_tensors="pt"))
        return task

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Examples:
        names = self.label_names or ds.features["label"].names
        captions = [self.cfg.caption.format(names[y]) for y in ds["label"]]
        enc = tokenizer(captions, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt")
        pixels = image_tensor(list(ds["image"]), self.cfg.image_size, self.cfg.channels)
        tensors = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "pixel_values": pixels,
                   "labels": torch.tensor(ds["label"], dtype=torch.long)}
        return Examples(tensors, enc["attention_mask"].sum(dim=1))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Symmetric InfoNCE over the batch's (image, caption) pairs (transformers' CLIP loss)."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"], return_loss=True).loss

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Examples, batch_size: int) -> dict[str, float]:
        """Zero-shot accuracy against every class's caption, and the mean contrastive loss."""
        model.eval()
        # transformers 5 returns the projected embeddings as the output's pooler_output
        classes = F.normalize(model.get_text_features(**self.prompts).pooler_output, dim=-1)  # (K, D)
        correct, loss_sum, seen = 0, 0.0, 0
        for batch in batches(data, batch_size):
            images = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
            images = F.normalize(images, dim=-1)  # (B, D)
            correct += int(((images @ classes.T).argmax(dim=-1) == batch["labels"]).sum())
            if self.with_loss:
                loss_sum += float(self.loss(model, batch)) * len(batch["labels"])
            seen += len(batch["labels"])
        n = max(seen, 1)
        return {"loss": loss_sum / n if self.with_loss else float("nan"), "accuracy": correct / n,
                "num-examples": seen}
