"""Main job: port the bundled PyTorch CNN checkpoint into its Keras twin and prove they agree.

    KERAS_BACKEND=torch python examples/port_cnn.py      (KERAS_BACKEND=jax works too)
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cnn_twins import TorchCNN, keras_cnn  # noqa: E402

import weightport as wp  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "fixtures")


def main() -> int:
    checkpoint = os.path.join(FIXTURES, "cnn_torch.pt")
    keras_model = keras_cnn()
    report = wp.port(checkpoint, keras_model)  # torch-layout state dict -> Keras layers, every transform done
    print(report)

    torch_model = TorchCNN()  # the checkpoint's own model, to prove the port computes the same function
    torch_model.load_state_dict(torch.load(checkpoint, weights_only=True))
    x_nchw = np.load(os.path.join(FIXTURES, "cnn_input.npy"))
    result = wp.verify(torch_model, keras_model, (x_nchw, x_nchw.transpose(0, 2, 3, 1)))
    print(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
