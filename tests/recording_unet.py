"""A fake UNet for conditioning tests: it records every call and predicts, for each row, the mean of the row's
text embedding as eps everywhere, so calc_cond_batch's weighted average can be read off its output."""

from __future__ import annotations

from types import SimpleNamespace

import torch


class RecordingUNet(torch.nn.Module):
    def __init__(self, in_channels: int = 4, **config) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=in_channels, **config)
        self.calls: list[dict[str, object]] = []

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=False):
        self.calls.append({"sample": sample.clone(), "timestep": timestep.clone(), "embeds": encoder_hidden_states,
                           "added": added_cond_kwargs})
        value = encoder_hidden_states.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        return (value.expand(sample.shape[0], 4, *sample.shape[-2:]).clone(),)
