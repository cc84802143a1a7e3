"""An exponential moving average of the global models the rounds release (``federation.ema``).

Under client-level DP every round's global model carries that round's noise; the average of the last rounds'
models carries less of it, and since it only reads released models it costs no privacy (post-processing). Averaging
a DP run's intermediate models is what Shejwalkar et al. ("Recycling Scraps", 2022) showed gains accuracy for
DP-FedAvg at no privacy cost, and De et al. (2022) use for DP-SGD. The clients keep training from the round's own
model: the average is what the server evaluates (``test_ema_*``) and saves (``final/ema``) beside it.

Written by hand because Flower's strategies have no notion of it and ``torch.optim.swa_utils`` averages a module's
parameters in place, where the server holds only the state a round released.
"""

from __future__ import annotations

import torch

__all__ = ["ModelAverage"]


class ModelAverage:
    """The running average: the plain mean of the models so far while there are fewer than 1 / (1 - decay) of
    them (no pull towards the first), then ``decay`` x average + (1 - decay) x model."""

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"federation.ema must be in (0, 1) to average, got {decay}")
        self.decay = decay
        self.count = 0
        self.average: dict[str, torch.Tensor] = {}

    def update(self, state: dict[str, torch.Tensor]) -> None:
        """Fold in one released model. Floating tensors are averaged, others (counters) taken as they are; a
        state of other keys or shapes (a continual stream's grown head) starts the average again."""
        if self.average.keys() != state.keys() or any(self.average[k].shape != v.shape for k, v in state.items()):
            self.count, self.average = 0, {}
        self.count += 1
        weight = max(1.0 - self.decay, 1.0 / self.count)  # the plain mean until 1 / (1 - decay) models
        for key, value in state.items():
            if not value.is_floating_point() or key not in self.average:
                self.average[key] = value.detach().clone()
            else:
                self.average[key].mul_(1.0 - weight).add_(value.detach().to(self.average[key].dtype), alpha=weight)

    def state(self) -> dict[str, torch.Tensor]:
        """The averaged model's state (empty before the first update)."""
        return dict(self.average)

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run goes on with the same average."""
        return {"decay": self.decay, "count": self.count, "average": self.average}

    def load_state_dict(self, saved: dict) -> None:
        """Restore from :meth:`state_dict` (a checkpoint of a run with another decay starts the average again)."""
        if saved.get("decay") == self.decay:
            self.count, self.average = int(saved["count"]), dict(saved["average"])
