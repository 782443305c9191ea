"""torchvision's VisionTransformer (models/vision_transformer.py), written out as torchvision
builds it: conv_proj, class_token, encoder (pos_embedding, dropout, encoder_layer_0 ...
encoder_layer_{L-1}, ln), heads.head; pre-norm encoder blocks (ln_1, self_attention, dropout,
the residual; ln_2, mlp: Linear, activation, Dropout, Linear, Dropout, the residual)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .common import each, rename


class EncoderBlock(nn.Module):
    def __init__(self, heads, hidden, mlp_dim, dropout, activation):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden, heads, dropout=0.0, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_dim), activation(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden), nn.Dropout(dropout))

    def forward(self, x0):
        x = self.ln_1(x0)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + x0
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, tokens, layers, heads, hidden, mlp_dim, dropout, activation):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, hidden).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(heads, hidden, mlp_dim, dropout, activation))
            for i in range(layers)))
        self.ln = nn.LayerNorm(hidden, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    def __init__(self, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim,
                 num_classes=1000, dropout=0.0, activation=nn.GELU):
        super().__init__()
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        tokens = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(tokens, num_layers, num_heads, hidden_dim, mlp_dim, dropout, activation)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(num_classes=1000, image_size=224, activation=nn.GELU, **small):
    """ViT-B/16 (torchvision's vit_b_16), or smaller where `small` says (num_layers, ...)."""
    config = dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    return VisionTransformer(image_size, num_classes=num_classes, activation=activation,
                             **{**config, **small})


# netspec's names in specs/vit_b_16.net -> torchvision's (encoder_layer_1 is encoder_layer_0)
names = each(rename([
    (r"class_token\.class_token", "class_token"),
    (r"pos_embedding\.pos_embedding", "encoder.pos_embedding"),
    (r"encoder_layer_(\d+)/\w+/(ln_1|ln_2|self_attention)\.(.+)",
     lambda m: f"encoder.layers.encoder_layer_{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    (r"encoder_layer_(\d+)/m/mlp/dense([12])\.(.+)",
     lambda m: f"encoder.layers.encoder_layer_{int(m[1]) - 1}.mlp.{3 * (int(m[2]) - 1)}.{m[3]}"),
    (r"ln\.(.+)", r"encoder.ln.\1"),
    (r"head\.(.+)", r"heads.head.\1"),
]))
