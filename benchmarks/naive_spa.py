"""SPA written straight from the paper's equations: the baseline any reader would write.

Separate theta and g convs, the paper's (n x c) layout with its permutes, a full descending sort
for the top-k (Alg. 1, step 3), Y = V A (Eq. 7) and W, all in the input's precision. It holds the
same parameters as `SalientPositionsAttention` (`load_from` copies them), so the benchmark can check
that both compute the same function before timing them.
"""
import torch
from torch import nn

from timm_spa.layers import SalientPositionsAttention


class NaiveSalientPositionsAttention(nn.Module):
    def __init__(self, in_channels: int, k: int = 2, scale: float = 1.0):
        super().__init__()
        self.k = k
        self.scale = scale
        self.theta = nn.Conv2d(in_channels, in_channels, 1)
        self.g = nn.Conv2d(in_channels, in_channels, 1)
        self.W = nn.Conv2d(in_channels, in_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)

    @torch.no_grad()
    def load_from(self, block: SalientPositionsAttention) -> 'NaiveSalientPositionsAttention':
        rd = block.rd_channels
        self.theta.weight.copy_(block.qv.weight[:rd])
        self.theta.bias.copy_(block.qv.bias[:rd])
        self.g.weight.copy_(block.qv.weight[rd:])
        self.g.bias.copy_(block.qv.bias[rd:])
        self.W.weight.copy_(block.proj.weight)
        self.bn.load_state_dict(block.norm.state_dict())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q = self.theta(x).view(B, C, -1).permute(0, 2, 1)                 # Q: n x c (Eq. 3)
        v = self.g(x).view(B, C, -1).permute(0, 2, 1)                     # V: n x c (Eq. 4)
        q_pow = (q ** 2).sum(dim=2)                                       # Alg. 1, steps 1-2
        index_k = q_pow.argsort(dim=1, descending=True)[:, :min(self.k, H * W)]  # step 3
        k = q[torch.arange(B, device=x.device)[:, None], index_k]         # K: k x c (Eq. 5)
        a = torch.softmax(torch.bmm(k.transpose(1, 2), k) * self.scale, dim=-1)  # A: c x c (Eq. 6)
        y = torch.bmm(v, a.transpose(1, 2))                               # Y = V A^T: n x c (Eq. 7)
        y = y.permute(0, 2, 1).contiguous().view(B, C, H, W)
        return x + self.bn(self.W(y))
