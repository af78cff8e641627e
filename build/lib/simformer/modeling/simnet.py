"""SimNet: the pixel-pair similarity network of SimFormer (spec §2.5), and its running class balance.

SimNet scores every pair (f_i, f'_j) of K points of an image and K points of its partner. The reference
implementation runs 1x1 convs over a (B, 2C, K, K) "pair image" of concatenated features; here the first
layer is factorised exactly, W [f_i ; f'_j] = W_a f_i + W_b f'_j, so the 2C-channel pair tensor is never
built (spec §11). BatchNorm statistics are taken over all B*K*K pairs, as in the reference.
"""
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

__all__ = ["SimNet", "RunningPairBalance"]


class _PairBlock(nn.Module):
    """Residual block on pair features (..., C_in) -> (..., C_out): main path Linear-BN-ReLU-Linear-BN-ReLU,
    shortcut identity or ReLU(Linear) (``project``; default: when C_in != C_out)."""

    def __init__(self, in_dim, out_dim, bn=True, project=None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim, bias=not bn)
        self.bn1 = nn.BatchNorm1d(out_dim) if bn else nn.Identity()
        self.fc2 = nn.Linear(out_dim, out_dim, bias=not bn)
        self.bn2 = nn.BatchNorm1d(out_dim) if bn else nn.Identity()
        project = in_dim != out_dim if project is None else project
        self.shortcut = nn.Linear(in_dim, out_dim) if project else None

    def forward(self, x):
        """x: (N, C_in) -> (N, C_out)."""
        y = F.relu(self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x))))))
        return y + (x if self.shortcut is None else F.relu(self.shortcut(x)))


class SimNet(nn.Module):
    """Pixel-pair similarity: features (B, K, C) of image points and (B, K, C) of partner points ->
    logits (B, K, K) of "same class" (the 2-way softmax of the reference, as l_1 - l_0)."""

    def __init__(self, in_dim: int, hidden_dim: int = 256, num_blocks: int = 3, bn: bool = True):
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"SimNet needs at least 1 block, got {num_blocks}")
        self.in_dim = in_dim
        first = _PairBlock(2 * in_dim, hidden_dim, bn, project=True)  # its input is a pair: always projected
        self.blocks = nn.ModuleList([first] + [_PairBlock(hidden_dim, hidden_dim, bn) for _ in range(num_blocks - 1)])
        self.head = nn.Linear(hidden_dim, 2)

    @staticmethod
    def _pair_linear(layer: nn.Linear, fa, fb):
        """layer([fa_i ; fb_j]) for every (i, j) without concatenating: (B, K, C) x 2 -> (B*K*K, out)."""
        c = fa.shape[-1]
        wa, wb = layer.weight[:, :c], layer.weight[:, c:]
        ya = F.linear(fa, wa, layer.bias)  # (B, K, out)
        yb = F.linear(fb, wb)  # (B, K, out)
        return (ya[:, :, None, :] + yb[:, None, :, :]).flatten(0, 2)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        if fa.shape != fb.shape or fa.shape[-1] != self.in_dim:
            raise ValueError(f"SimNet: expected two (B, K, {self.in_dim}) feature sets, got {tuple(fa.shape)} and {tuple(fb.shape)}")
        b, k, _ = fa.shape
        first = self.blocks[0]
        y = F.relu(first.bn1(self._pair_linear(first.fc1, fa, fb)))
        y = F.relu(first.bn2(first.fc2(y)))
        x = y + F.relu(self._pair_linear(first.shortcut, fa, fb))
        for block in self.blocks[1:]:
            x = block(x)
        logits = self.head(x)
        return (logits[:, 1] - logits[:, 0]).view(b, k, k)

    def forward_concat(self, fa, fb):
        """Reference form (concatenated pair features); equal to :meth:`forward`, used by tests."""
        b, k, c = fa.shape
        x = torch.cat([fa[:, :, None, :].expand(b, k, k, c), fb[:, None, :, :].expand(b, k, k, c)], dim=-1).flatten(0, 2)
        for block in self.blocks:
            x = block(x)
        logits = self.head(x)
        return (logits[:, 1] - logits[:, 0]).view(b, k, k)


class RunningPairBalance(nn.Module):
    """Running positive / negative counts of pair targets over the last ``window`` updates (spec §4.5).

    The window starts with one (1 positive, 1 negative) entry. Weights: w(1) = N / (P + N) and
    w(0) = P / (P + N). Counts use every ``stride``-th row and column of the target matrices and are
    summed over processes, so every process uses the same weights. The state is a buffer, so it is saved
    in checkpoints and restored on resume.
    """

    def __init__(self, window: int = 25, stride: int = 5):
        super().__init__()
        if window < 1 or stride < 1:
            raise ValueError(f"RunningPairBalance: window and stride must be >= 1, got {window}, {stride}")
        self.window, self.stride = window, stride
        history = torch.zeros(window, 2, dtype=torch.float64)
        history[0] = 1.0
        self.register_buffer("history", history)  # rows: (positives, negatives) of one update
        self.register_buffer("num_updates", torch.ones((), dtype=torch.int64))

    @torch.no_grad()
    def update(self, target: torch.Tensor):
        """Add the counts of ``target`` (..., K, K) in {0, 1}; returns (w_pos, w_neg) as Python floats."""
        sub = target[..., :: self.stride, :: self.stride]
        pos = sub.sum().to(torch.float64)
        counts = torch.stack([pos, sub.numel() - pos]).to(self.history.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        self.history[int(self.num_updates) % self.window] = counts
        self.num_updates += 1
        return self.weights()

    def weights(self):
        p, n = self.history.sum(dim=0).tolist()
        return n / (p + n), p / (p + n)
