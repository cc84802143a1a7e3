"""Image classification (ViT): images become normalized (C, H, W) tensors at the task's image size; the loss,
accuracy and collapse warning are text classification's."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageClassification, PreTrainedModel, PreTrainedTokenizerBase

from ffm.models.backbone import load_model
from ffm.models.config import ModelConfig
from ffm.settings import option, require
from ffm.tasks.classification import TextClassification, TextClassificationConfig
from ffm.tasks.examples import Examples

__all__ = ["ImageClassification", "ImageClassificationConfig", "image_tensor"]


@dataclass
class ImageClassificationConfig(TextClassificationConfig):
    """The image task's keys: image size, patch size, channels (and the classifier's logit adjustment)."""

    name: str = "image_classification"
    image_size: int = option(28, "images are resized to image_size x image_size")
    patch_size: int = option(7, "from_scratch ViT: patch size (must divide image_size)")
    channels: int = option(1, "1 (grey) or 3 (RGB): images are converted to this")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.image_size % self.patch_size == 0, "task.patch_size must divide task.image_size")
        require(self.channels in (1, 3), "task.channels must be 1 or 3")


def image_tensor(images: list, size: int, channels: int) -> torch.Tensor:
    """(N, C, size, size) in [-1, 1] from (H, W) uint8 arrays or image file paths."""
    from PIL import Image  # only image tasks need it

    arrays = []
    for image in images:
        if isinstance(image, str):
            with Image.open(image) as opened:
                image = np.asarray(opened.convert("L" if channels == 1 else "RGB"))
        arrays.append(torch.as_tensor(np.asarray(image), dtype=torch.float32))
    shaped = []
    for array in arrays:
        array = array.permute(2, 0, 1) if array.ndim == 3 else array[None].expand(channels, -1, -1)  # (C, H, W)
        shaped.append(F.interpolate(array[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(shaped) / 127.5 - 1.0


class ImageClassification(TextClassification):
    """A ViT (or any image classifier) with a fresh head; accuracy."""

    config = ImageClassificationConfig
    columns = ("image", "label")
    peft_task_type = None
    head_modules = ("classifier",)
    uses_tokenizer = False

    def build_model(
        self, model: ModelConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase | None, seed: int
    ) -> PreTrainedModel:
        extra = {"image_size": self.cfg.image_size, "patch_size": self.cfg.patch_size,
                 "num_channels": self.cfg.channels} if model.from_scratch else {}
        return load_model(AutoModelForImageClassification, model, tokenizer, seed, num_labels=len(label_names),
                          ignore_mismatched_sizes=True, **extra)

    def encode(self, ds: datasets.Dataset, tokenizer: PreTrainedTokenizerBase | None, max_length: int) -> Examples:
        pixels = image_tensor(list(ds["image"]), self.cfg.image_size, self.cfg.channels)
        labels = torch.tensor(ds["label"], dtype=torch.long)
        return Examples({"pixel_values": pixels, "labels": labels}, torch.ones(len(labels), dtype=torch.long),
                        sequence_keys=())
