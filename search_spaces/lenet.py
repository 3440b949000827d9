"""LeNet-5 as Caffe defines it (``lenet_train_test.prototxt``): SCANN's image-mode baseline.

Paper: "SCANN: Synthesis of Compact and Accurate Neural Networks" (``../shared/seeds/002_d08e71b4be716ba4.txt``),
Sec. 4.1: the baseline for MNIST is LeNet-5 with 430.5K parameters; SCANN keeps its convolutional
part ("kept the same") and synthesises the fully connected part.  Caffe's net: conv 20@5x5,
max-pool 2, conv 50@5x5, max-pool 2, FC 500 + ReLU, FC classes -- no non-linearity after the
convolutions.  Golden number: 431,080 parameters on 28x28 inputs with 10 classes (520 + 25,050 +
400,500 + 5,010; the paper rounds to 430.5K).

The module reads like torchvision's model files: a helper, the blocks, the model, a builder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LENET_FC", "ImageScannModel", "LeNet5", "LeNet5Features", "lenet5"]

#: Hidden units of LeNet-5's (Caffe) first fully connected layer.
LENET_FC = 500


def _conv_pool(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 5x5 convolution (no activation, as in Caffe) and a 2x2 max-pool."""
    return [nn.Conv2d(in_channels, out_channels, 5), nn.MaxPool2d(2, 2)]


class LeNet5Features(nn.Sequential):
    """The convolutional part: conv 20@5x5, max-pool 2, conv 50@5x5, max-pool 2, flatten."""

    def __init__(self, in_channels: int = 1):
        super().__init__(*_conv_pool(in_channels, 20), *_conv_pool(20, 50), nn.Flatten())


class LeNet5(nn.Module):
    """Features, FC ``hidden`` + ReLU, FC ``num_classes``."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = LENET_FC):
        super().__init__()
        self.features = LeNet5Features(input_shape[0])
        with torch.no_grad():
            n = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.fc1 = nn.Linear(n, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(self.features(x))))


class ImageScannModel(nn.Module):
    """A fixed convolutional extractor followed by a synthesised fully connected part (the exported model)."""

    def __init__(self, features: nn.Module, fc: nn.Module):
        super().__init__()
        self.features = features
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def lenet5(num_classes: int = 10, input_shape: tuple[int, int, int] = (1, 28, 28), hidden: int = LENET_FC) -> LeNet5:
    """LeNet-5 (Caffe) for ``input_shape`` (channels, height, width) and ``num_classes``."""
    return LeNet5(num_classes, tuple(input_shape), hidden)
