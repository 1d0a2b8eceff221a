"""Small CNNs of graded capacity for the synthetic part world.

From weakest to strongest: ``tiny_cnn`` (one strided conv + global pooling, a colour detector),
``small_cnn`` (three plain convs), ``vgg_small`` (VGG-style stacks with BatchNorm) and
``resnet_small`` (a ResNet with three stages of basic blocks).
"""

from __future__ import annotations

from torch import nn


class TinyCNN(nn.Module):
    """One 5×5 stride-4 conv with 8 channels, global average pooling, linear head."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=4, padding=2), nn.ReLU(inplace=True)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class SmallCNN(nn.Module):
    """Three 3×3 convs (16/32/32 channels) with max pooling, no normalisation."""

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class VGGSmall(nn.Module):
    """VGG-style: [w, w, pool, 2w, 2w, pool, 4w, 4w, pool] conv-BN-ReLU stacks, global pooling, linear."""

    def __init__(self, num_classes: int, width: int = 24):
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        cin = 3
        for cout in (w, 2 * w, 4 * w):
            layers += _conv_bn(cin, cout) + _conv_bn(cout, cout) + [nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A ResNet for small images: stride-2 stem conv, three stages (w, 2w, 4w) of ``blocks`` basic blocks.

    The stride-2 stem keeps it cheap enough for hundreds of mask iterations per image on a CPU.
    """

    version = 2  # bump when the architecture changes: cached trainings are keyed by it

    def __init__(self, num_classes: int, width: int = 24, blocks: int = 1):
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn(3, w, stride=2))
        self.layer1 = nn.Sequential(*[BasicBlock(w, w, 1) for _ in range(blocks)])
        self.layer2 = nn.Sequential(
            BasicBlock(w, 2 * w, 2), *[BasicBlock(2 * w, 2 * w, 1) for _ in range(blocks - 1)]
        )
        self.layer3 = nn.Sequential(
            BasicBlock(2 * w, 4 * w, 2), *[BasicBlock(4 * w, 4 * w, 1) for _ in range(blocks - 1)]
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


SMALL_CNNS = {
    "tiny_cnn": TinyCNN,
    "small_cnn": SmallCNN,
    "vgg_small": VGGSmall,
    "resnet_small": ResNetSmall,
}
