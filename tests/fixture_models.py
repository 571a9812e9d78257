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


class PositionBiasCNN(SmallCNN):
    """SmallCNN after a column-position bias made on the input's device (as positional codes are)."""

    def forward(self, x):
        columns = torch.arange(x.shape[-1], device=x.device, dtype=x.dtype)
        return super().forward(x + 0.01 * columns)


def build_position_bias_cnn():
    torch.manual_seed(0)
    return PositionBiasCNN().eval()


def raising_factory():
    raise RuntimeError("factory exploded")


NOT_CALLABLE = 3


class AttentionBlock(nn.Module):
    """Pre-norm transformer block as timm's ViT writes it (fused qkv, reshape/permute/unbind)."""

    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attention = ((q @ k.transpose(-2, -1)) * (dim // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.mlp(self.norm2(x))


class VitLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 32, 8, 8)
        self.blocks = nn.Sequential(AttentionBlock(), AttentionBlock())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(tokens).mean(1))


def build_vit_like():
    torch.manual_seed(0)
    return VitLike().eval()


class FileWriter(nn.Module):
    """Hostile: its forward writes a tensor to `path` with a host op (what edgepipe must refuse to run)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def forward(self, x):
        torch.ops.aten.save(x, self.path)
        return x + 1


class TokenClassifier(nn.Module):
    """A BERT-like text classifier as users export it: token embedding, a transformer encoder told
    which tokens are padding (src_key_padding_mask: an additive -inf mask in the export), masked
    mean pooling over the tokens, a linear head; int64 `input_ids` and `attention_mask` inputs.
    `legacy_mask`: the padding mask as older BERT code builds it, `(1 - mask) * -10000` added to
    the scores (finite, far below the sentinel magnitude, so it calibrates like any tensor)."""

    def __init__(self, vocab=1000, dim=32, heads=4, layers=2, classes=5, legacy_mask=False):
        super().__init__()
        self.legacy_mask = legacy_mask
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, batch_first=True, dropout=0.0)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, input_ids, attention_mask):
        padding = (1.0 - attention_mask.float()) * -10000.0 if self.legacy_mask else attention_mask == 0
        hidden = self.enc(self.emb(input_ids), src_key_padding_mask=padding)
        weights = attention_mask.unsqueeze(-1).float()
        return self.fc((hidden * weights).sum(1) / weights.sum(1))


def build_token_classifier(legacy_mask: bool = False):
    torch.manual_seed(0)
    return TokenClassifier(legacy_mask=legacy_mask).eval()


def token_batch(count: int, seed: int, length: int = 16, vocab: int = 1000) -> dict:
    """int64 token ids and 0/1 attention masks, each sample padded after 4..15 real tokens (ids
    past the padding are random, as a tokenizer's pad id would be one fixed id: the model must
    ignore them either way)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (count, length))
    mask = np.ones((count, length), np.int64)
    for row in range(count):
        mask[row, rng.integers(4, length):] = 0
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}
