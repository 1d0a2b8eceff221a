"""CIFAR-10 ResNets of He et al. (ResNet-20/32/44/56) with the "option A" shortcut.

The definition matches the pretrained weights in ``shared/weights/cifar10_resnet`` (3 stages of
16/32/64 channels, n basic blocks each, bias-free convs, BatchNorm, ``linear`` 64→10).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

DEPTHS = {20: 3, 32: 5, 44: 7, 56: 9}


class PadShortcut(nn.Module):
    """Identity subsampled by 2 and zero-padded by ``planes // 4`` channels on both sides."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = PadShortcut(planes) if stride != 1 or cin != planes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"CIFAR ResNet depth {depth} is not one of {sorted(DEPTHS)}")
        n = DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for i, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(CifarBlock(cin, planes, stride if j == 0 else 1))
                cin = planes
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)
