"""Live ports of a 485M-parameter Llama-like model against what the frameworks themselves do, in one run.

    python benchmarks/port_live.py                 # both Keras backends, one child process each
    python benchmarks/port_live.py --backend torch # one backend, in this process

For each backend: the torch model of benchmarks/llama_like.py (random float32 weights) and its Keras twin
(every variable written once beforehand, so nobody pays first-touch page faults), then, alternating with
three measurements of the floor (their median is quoted):

- ``wp.port(torch_model, keras_model)``, first and second call, and the growth of peak RSS during the first;
- the floor: ``dst.copy_(src.T)`` (``copy_(src)`` for vectors) of every source tensor into a buffer of the
  target's shape, torch's own transposing copy on every core;
- Keras ``set_weights`` of the already transposed arrays, and torch ``load_state_dict`` of the same tensors;
- ``wp.port(keras_model, torch_model)`` back, first and second call;
- the README's small MLP ported torch -> Keras: first call after imports (torch, Keras and weightport imported,
  weightport's own modules imported lazily by the call; in a child keeping compiled bytecode, as an installed
  package does), and the median of five more.

Targets (issue 13): torch -> Keras (torch backend) first call at most 1.5x the floor, RSS growth at most the
largest tensor + 100 MiB; the MLP under 50 ms after imports.
"""
import argparse
import gc
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
MiB = 1 << 20


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def growth(fn) -> tuple:
    """(seconds, peak RSS growth) of ``fn()``: RSS sampled every millisecond against RSS just before."""
    import threading

    start, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        seconds = timed(fn)
    finally:
        done.set()
        watcher.join()
    return seconds, max(peak[0], rss()) - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def build():
    """The torch model with random weights and its zeroed, touched Keras twin."""
    import torch

    import llama_like

    torch.manual_seed(0)
    src = llama_like.torch_structure().to_empty(device="cpu")
    with torch.no_grad():
        for t in src.state_dict().values():
            t.normal_(0, 0.02)
    keras_model = llama_like.keras_structure()
    for v in keras_model.weights:
        v.assign(v.numpy() + 1)  # written once: its pages are the model's own
    return src, keras_model


def small_mlp_ms() -> tuple:
    """(first call, median of five more) of the README's MLP port, in ms."""
    import keras
    import torch

    import weightport as wp

    torch_model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    keras_model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu"),
                                    keras.layers.Dense(3)])
    first = timed(lambda: wp.port(torch_model, keras_model))
    rest = [timed(lambda: wp.port(torch_model, keras_model)) for _ in range(5)]
    return first * 1e3, statistics.median(rest) * 1e3


def small_mlp_in_child(backend: str) -> tuple:
    """``small_mlp_ms`` in a fresh process that keeps compiled bytecode (even where PYTHONDONTWRITEBYTECODE is
    set), as an installed package does; the first such child only writes it, the second is measured."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(KERAS_BACKEND=backend, PYTHONPYCACHEPREFIX=os.path.join(HERE, "_work", "pycache"))
    command = [sys.executable, __file__, "--backend", backend, "--mlp"]
    for _ in range(2):
        done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    first, rest = done.stdout.split()[-2:]
    return float(first), float(rest)


def floor_s(src) -> float:
    """``dst.copy_(src.T)`` for every tensor, into buffers of the transposed shape written once beforehand."""
    import torch

    tensors = list(src.state_dict().values())
    buffers = [torch.zeros(tuple(reversed(t.shape))) for t in tensors]
    with torch.no_grad():
        seconds = timed(lambda: [b.copy_(t.T if t.dim() == 2 else t) for b, t in zip(buffers, tensors)])
    del buffers
    gc.collect()
    return seconds


def measure(backend: str) -> dict:
    """Every figure for one backend, in seconds and bytes."""
    import numpy as np
    import torch

    import weightport as wp

    out = {"mlp_first_ms": None}
    out["mlp_first_ms"], out["mlp_next_ms"] = small_mlp_in_child(backend)
    src, keras_model = build()
    state = src.state_dict()
    out["largest"] = max(t.nbytes for t in state.values())
    out["total"] = sum(t.nbytes for t in state.values())
    gc.collect()
    floors = [floor_s(src)]
    out["port_first"], out["rss_growth"] = growth(lambda: wp.port(src, keras_model, quiet=True))
    floors.append(floor_s(src))
    out["port_second"] = timed(lambda: wp.port(src, keras_model, quiet=True))
    floors.append(floor_s(src))
    kernel = keras_model.embed_tokens.weights[0].numpy()
    assert np.array_equal(kernel, state["model.embed_tokens.weight"].numpy()), "embedding differs"
    down = keras_model.blocks[0][5].weights[0].numpy()
    assert np.array_equal(down, state["model.layers.0.mlp.down_proj.weight"].numpy().T), "kernel differs"
    out["floor"] = statistics.median(floors)  # measured around the ports, so load on the machine hits both
    arrays = [np.array(w, copy=True) for w in keras_model.get_weights()]
    out["set_weights"] = timed(lambda: keras_model.set_weights(arrays))
    del arrays
    copies = {k: v.clone() for k, v in state.items()}
    out["load_state_dict"] = timed(lambda: src.load_state_dict(copies))
    del copies
    gc.collect()
    with torch.no_grad():
        for t in state.values():
            t.zero_()
    out["back_first"] = timed(lambda: wp.port(keras_model, src, quiet=True))
    out["back_second"] = timed(lambda: wp.port(keras_model, src, quiet=True))
    assert np.array_equal(src.state_dict()["model.layers.0.mlp.down_proj.weight"].numpy(), down.T), "back differs"
    return out


def report(backend: str, r: dict) -> None:
    floor, budget = r["floor"], r["largest"] + 100 * MiB
    print(f"\n== Keras backend: {backend}; {r['total'] / 1e9:.2f} GB float32, largest tensor "
          f"{r['largest'] / MiB:.0f} MiB ==")
    rows = [("floor: dst.copy_(src.T), every tensor", floor),
            ("torch load_state_dict (same tensors)", r["load_state_dict"]),
            ("Keras set_weights (pre-transposed)", r["set_weights"]),
            ("wp.port torch -> Keras, first call", r["port_first"]),
            ("wp.port torch -> Keras, second call", r["port_second"]),
            ("wp.port Keras -> torch, first call", r["back_first"]),
            ("wp.port Keras -> torch, second call", r["back_second"])]
    print(f"{'':40} {'s':>7} {'x floor':>8} {'GB/s':>6}")
    for name, seconds in rows:
        print(f"{name:40} {seconds:7.3f} {seconds / floor:8.2f} {r['total'] / seconds / 1e9:6.2f}")
    print(f"peak RSS growth during the first torch -> Keras port: {r['rss_growth'] / MiB:.0f} MiB "
          f"(budget: largest tensor + 100 MiB = {budget / MiB:.0f} MiB; {r['rss_growth'] / budget:.2f}x)")
    print(f"README MLP torch -> Keras: first call {r['mlp_first_ms']:.1f} ms, then median {r['mlp_next_ms']:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("torch", "jax"), help="one backend, in this process")
    parser.add_argument("--mlp", action="store_true", help="only the README's MLP: print its two figures (ms)")
    args = parser.parse_args()
    if args.backend is None:
        for backend in ("torch", "jax"):
            subprocess.run([sys.executable, __file__, "--backend", backend], check=True,
                           env={**os.environ, "KERAS_BACKEND": backend})
        return
    if os.environ.get("KERAS_BACKEND") != args.backend:
        os.execve(sys.executable, [sys.executable, __file__, "--backend", args.backend],
                  {**os.environ, "KERAS_BACKEND": args.backend})
    import keras  # noqa: F401 - imported before the timed calls, as a user's script would
    import torch  # noqa: F401

    import weightport  # noqa: F401

    if args.mlp:
        print(*small_mlp_ms())
        return
    report(args.backend, measure(args.backend))


if __name__ == "__main__":
    main()
