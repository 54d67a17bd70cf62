"""Image classification: cross-entropy of one label per image (ViT, Dosovitskiy et al., 2021,
§3.1: the classification head on the [class] token or the pooled patches).

    loss = mean_b −log softmax(f(x_b))[y_b]  (+ the model's auxiliary losses)

Metrics: ``loss`` and ``accuracy`` per image (summed exactly over batches and ranks), so the
trainer's validation line and ``summary.json`` report ``val_accuracy``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import OBJECTIVES
from .base import Objective, aux_of, exact_sum


@OBJECTIVES.register(
    "image_classification",
    paper="An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale "
          "(Dosovitskiy et al., 2021)",
    equation="§3.1: L = -log softmax(head(z_L^0))[y]", complexity=("O(B·classes)", "O(B·classes)"),
    test="tests/test_vision.py::test_image_classification_is_cross_entropy_and_accuracy")
class ImageClassification(Objective):
    """Cross-entropy over one label per image; accuracy."""

    data_format = "image"

    def check_model(self, model) -> None:
        if getattr(type(model), "input_kind", "tokens") != "image":
            raise ConfigError("objective", "image_classification",
                              why=f"needs an image model (model.arch=vit or metaformer); this "
                                  f"one is {type(model).__name__}")

    def __call__(self, model, batch):
        out = model(batch["images"])
        logits = out.logits.float()                                  # (B, classes)
        labels = batch["labels"]
        ce = F.cross_entropy(logits, labels, reduction="none")       # (B,)
        n = torch.tensor(labels.numel(), device=logits.device)
        hit = (logits.argmax(-1) == labels).sum()
        aux = aux_of(out)
        loss = ce.mean() + aux
        return loss, {"loss": (exact_sum(ce), n), "accuracy": (hit, n), "aux": (aux.detach(), 1)}
