"""A user's own network, as it would live in their project (``model.target=examples/nets.py:SmallNet``)."""

from torch import nn


class SmallNet(nn.Module):
    """Three conv stages and a linear head: (B, 3, S, S) normalised images -> (B, num_classes)."""

    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.features = nn.Sequential(
            stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))
