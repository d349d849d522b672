"""Tiny CNN for int8 on ONNX Runtime CPU kernels, and its export-ready (BN-folded, softmax) form.

Design: valid-padded 3x3 convs (no Pad work, shrinking maps), one MaxPool, channel counts that are
multiples of 8 (ORT's int8 conv kernels pack 8/16 channels at a time), global average pooling and a
1x1 conv classifier so the whole graph is Conv/Relu/MaxPool/GlobalAveragePool/Flatten/Softmax --
every node except the final Softmax has an int8 kernel (QLinearConv, MaxPool int8, QLinearGlobalAveragePool).
BatchNorm is used for training and folded into the convs at export.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ARCHS", "DigitNet", "Layer", "conv_layers", "conv_macs", "count_params", "export_module"]

# (out_channels, kernel[, stride]) per valid-padded conv; "M" = 2x2 max-pool. The last entry feeds
# GAP -> 1x1 conv -> 10.
Layer = tuple[int, int] | tuple[int, int, int] | str
ARCHS: dict[str, Sequence[Layer]] = {
    "t8": [(8, 3), (16, 3), "M", (8, 1), (16, 3), (16, 3), (16, 3)],
    "t12": [(8, 3), (16, 3), "M", (16, 3), (24, 3), (24, 3)],
    "t13": [(8, 3), (16, 3), "M", (16, 1), (16, 3), (24, 3), (32, 3)],
    "t12w": [(8, 3), (16, 3), "M", (16, 3), (24, 3), (28, 3)],
    # Device-class candidates (<= 0.4 M conv MACs, chosen on validation by tools.model.search).
    # s16*: two stride-2 convs straight away (28 -> 13 -> 6); p8: one full-resolution conv, a
    # max-pool, a conv, then a stride-2 conv (26 -> 13 -> 11 -> 5 -> 3). Channel counts follow
    # onnxruntime's conv kernels (tools/model/kernels.py): multiples of 16 from the second conv on.
    "s16": [(16, 3, 2), (32, 3, 2), (32, 3)],
    "s16k5": [(16, 5, 2), (32, 3, 2), (32, 3)],
    "p8": [(8, 3), "M", (16, 3), (32, 3, 2), (16, 3)],
}


class DigitNet(nn.Module):
    """Conv-BN-ReLU stack -> GAP -> 1x1 conv classifier; returns logits (N, 10)."""

    def __init__(self, arch: str = "t12", dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for spec in ARCHS[arch]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(spec, tuple)
            c_out, k, stride = (*spec, 1)[:3]
            layers += [nn.Conv2d(c_in, c_out, k, stride=stride, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            if dropout > 0 and k == 3:
                layers.append(nn.Dropout2d(dropout))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(c_in, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.head(self.pool(self.features(x))), 1)


class _Exported(nn.Module):
    """Inference form: BN folded into convs, dropout removed, Softmax inside the graph."""

    def __init__(self, net: DigitNet) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        seq = list(net.features)
        for i, m in enumerate(seq):
            if isinstance(m, nn.Conv2d):
                bn = seq[i + 1]
                assert isinstance(bn, nn.BatchNorm2d)
                mods.append(torch.nn.utils.fusion.fuse_conv_bn_eval(m, bn))
            elif isinstance(m, (nn.ReLU, nn.MaxPool2d)):
                mods.append(m)
        self.features = nn.Sequential(*mods)
        self.pool = net.pool  # exports as GlobalAveragePool (int8 kernel), unlike ReduceMean
        self.head = net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.pool(self.features(x)))
        return torch.softmax(torch.flatten(y, 1), dim=1)


def export_module(net: DigitNet) -> nn.Module:
    """Eval-mode copy ready for ONNX export (input (N,1,28,28) normalised, output probabilities)."""
    net = net.eval()
    with torch.no_grad():
        return _Exported(net).eval()


def conv_layers(arch: str, side: int = 28) -> list[dict[str, int]]:
    """Every conv of ``arch`` in graph order, the 1x1 head last: channels, kernel, stride, output
    side and multiply-accumulates at batch 1."""
    rows, c_in = [], 1
    for spec in ARCHS[arch]:
        if spec == "M":
            side //= 2
            continue
        assert isinstance(spec, tuple)
        c_out, k, stride = (*spec, 1)[:3]
        side = (side - k) // stride + 1
        rows.append({"c_in": c_in, "c_out": c_out, "kernel": k, "stride": stride, "out_side": side,
                     "macs": side * side * c_out * c_in * k * k})
        c_in = c_out
    rows.append({"c_in": c_in, "c_out": 10, "kernel": 1, "stride": 1, "out_side": 1, "macs": c_in * 10})
    return rows


def conv_macs(arch: str) -> int:
    """Conv multiply-accumulates of one inference (pool/ReLU/softmax not counted)."""
    return sum(r["macs"] for r in conv_layers(arch))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
