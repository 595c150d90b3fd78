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
    torch_model = TorchCNN()
    state = torch.load(os.path.join(FIXTURES, "cnn_torch.pt"), weights_only=True)
    torch_model.load_state_dict(state)
    keras_model = keras_cnn()

    report = wp.port(torch_model, keras_model)
    print(report)

    x_nchw = np.load(os.path.join(FIXTURES, "cnn_input.npy"))
    x_nhwc = x_nchw.transpose(0, 2, 3, 1)
    result = wp.verify(torch_model, keras_model, (x_nchw, x_nhwc))
    print(result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
