"""Resemblyzer's voice encoder, layer for layer (resemblyzer/voice_encoder.py, Apache-2.0): the
package imports librosa and webrtcvad at import time, which the tests do not install, so the
architecture is repeated here and the build gets the shipped `pretrained.pt` as `--weights`.

That file is a training checkpoint as users have it: {'step', 'model_state', 'optimizer_state'},
and its model_state carries two parameters of the training loss (`similarity_weight`,
`similarity_bias`) that the encoder does not have (Resemblyzer loads it with strict=False)."""

from __future__ import annotations

import torch
from torch import nn


class VoiceEncoder(nn.Module):
    def __init__(self, mel_channels: int = 40, hidden: int = 256, layers: int = 3, embedding: int = 256):
        super().__init__()
        self.lstm = nn.LSTM(mel_channels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)
        self.relu = nn.ReLU()

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds_raw = self.relu(self.linear(hidden[-1]))
        return embeds_raw / torch.norm(embeds_raw, dim=1, keepdim=True)


def voice_encoder() -> VoiceEncoder:
    return VoiceEncoder()
