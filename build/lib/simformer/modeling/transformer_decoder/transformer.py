"""DETR-style transformer layers (batch-first), post-norm by default.

Shapes: sequences are (B, L, C); ``pos`` / ``query_pos`` are added to queries and keys (not values).
"""
import copy

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder"]


def _with_pos(x, pos):
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, src, key_padding_mask=None, pos=None):
        x = self.norm1(src) if self.normalize_before else src
        q = k = _with_pos(x, pos)
        src = src + self.dropout1(self.self_attn(q, k, x, key_padding_mask=key_padding_mask, need_weights=False)[0])
        if not self.normalize_before:
            src = self.norm1(src)
        x = self.norm2(src) if self.normalize_before else src
        src = src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        if not self.normalize_before:
            src = self.norm2(src)
        return src


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        pre = self.normalize_before
        x = self.norm1(tgt) if pre else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout1(self.self_attn(q, k, x, need_weights=False)[0])
        if not pre:
            tgt = self.norm1(tgt)
        x = self.norm2(tgt) if pre else tgt
        attn = self.cross_attn(_with_pos(x, query_pos), _with_pos(memory, pos), memory, key_padding_mask=memory_key_padding_mask, need_weights=False)[0]
        tgt = tgt + self.dropout2(attn)
        if not pre:
            tgt = self.norm2(tgt)
        x = self.norm3(tgt) if pre else tgt
        tgt = tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        if not pre:
            tgt = self.norm3(tgt)
        return tgt


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers, norm=None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, src, key_padding_mask=None, pos=None):
        for layer in self.layers:
            src = layer(src, key_padding_mask=key_padding_mask, pos=pos)
        return self.norm(src) if self.norm is not None else src


class TransformerDecoder(nn.Module):
    """Stack of decoder layers; returns (num_layers, B, Q, C), every layer after the shared final norm."""

    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask=None, pos=None, query_pos=None):
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask=memory_key_padding_mask, pos=pos, query_pos=query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)
