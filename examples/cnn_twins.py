"""The same small CNN written twice: once in PyTorch, once in Keras (channels_last).

Used by the README's main job and by fixtures/make_fixtures.py.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # Keras 3 needs a backend; torch or jax both work

import keras  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

IN_CHANNELS, HEIGHT, WIDTH, CLASSES = 3, 17, 13, 10


class TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(IN_CHANNELS, 8, kernel_size=(3, 2)), nn.BatchNorm2d(8, eps=1e-3), nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=2), nn.BatchNorm2d(16, eps=1e-3), nn.ReLU(),
        )
        self.head = nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.features(x)
        return self.head(torch.mean(x, dim=(2, 3)))


def keras_cnn():
    layers = keras.layers
    return keras.Sequential([
        keras.Input((HEIGHT, WIDTH, IN_CHANNELS)),
        layers.Conv2D(8, (3, 2), name="conv_a"), layers.BatchNormalization(momentum=0.9, name="bn_a"),
        layers.ReLU(),
        layers.Conv2D(16, 3, strides=2, name="conv_b"), layers.BatchNormalization(momentum=0.9, name="bn_b"),
        layers.ReLU(),
        layers.GlobalAveragePooling2D(),
        layers.Dense(CLASSES, name="head"),
    ])
