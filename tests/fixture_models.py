"""PyTorch model factories used as `fixture_models:NAME` specs by the export and CLI tests."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build_small_cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


def raising_factory():
    raise RuntimeError("factory exploded")


NOT_CALLABLE = 3
