"""Pre-LN transformer encoder with a pluggable attention kernel.

    ids (B, T) --embed--> (B, T, D) --prepend learned [CLS], add sinusoidal positions--> (B, T+1, D)
    --L x [x + Drop(Attn(LN x)); x + Drop(FFN(LN x))]--> LN -> hidden states (B, T+1, D)

Each attention layer owns one feature map built by ``make_kernel()`` (so learned spectral
parameters are per layer). Token id 0 is padding: padded keys are masked out of attention.
The kernels' random draws change only through ``resample_kernels(seed, draw)``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lk_study.attention import kernel_attention
from lk_study.kernels import FeatureMap


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """(length, dim): PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


def draw_seed(seed: int, layer: int, draw: int) -> int:
    """A 63-bit seed from (run seed, layer, redraw index), identical on every rank."""
    digest = hashlib.blake2b(f"{seed}/{layer}/{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class KernelSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, kernel: FeatureMap, dropout: float) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.kernel = kernel
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor | None) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d_head)
        out = kernel_attention(q, k, v, self.kernel, key_valid)  # (B, H, T, d_head)
        return self.dropout(self.out(out.transpose(1, 2).reshape(b, t, d)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, dropout: float, kernel: FeatureMap):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = KernelSelfAttention(d_model, num_heads, kernel, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_valid: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln1(x), key_valid)
        return x + self.drop(self.ffn(self.ln2(x)))


class Encoder(nn.Module):
    """Token ids (B, T) -> hidden states (B, T+1, D), row 0 being [CLS]."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        dropout: float,
        make_kernel: Callable[[], FeatureMap],
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.padding_idx = padding_idx  # the task's PAD_ID: embedded as 0, masked as a key
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=padding_idx)
        self.cls = nn.Parameter(torch.randn(d_model) * 0.02)
        self.register_buffer("pos", sinusoidal_positions(max_len + 1, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, d_ff, dropout, make_kernel())
            for _ in range(num_layers)
        )
        self.ln = nn.LayerNorm(d_model)

    def forward(self, ids: Tensor) -> Tensor:
        b, t = ids.shape
        if t + 1 > self.pos.shape[0]:
            raise ValueError(f"sequence length {t} exceeds max_len {self.pos.shape[0] - 1}")
        x = torch.cat([self.cls.expand(b, 1, -1), self.embed(ids)], dim=1)  # (B, T+1, D)
        x = self.drop(x + self.pos[: t + 1])
        key_valid = torch.cat(
            [ids.new_ones(b, 1, dtype=torch.bool), ids != self.padding_idx], dim=1
        )
        for layer in self.layers:
            x = layer(x, key_valid)
        return self.ln(x)

    def resample_kernels(self, seed: int, draw: int) -> None:
        """Redraw every layer's features from a generator seeded by (seed, layer, draw)."""
        for i, layer in enumerate(self.layers):
            g = torch.Generator().manual_seed(draw_seed(seed, i, draw))
            layer.attn.kernel.resample(g)
