"""Convert a ~2 GB Llama-like torch-layout checkpoint to Keras layout; compare with cp and a naive pipeline.

    python benchmarks/convert_large.py [--workdir DIR] [--keep] [--rounds N] [--only cp,safetensors]

Builds benchmarks/_work/llama_torch.safetensors (float32, ~1.94 GB) once, warms the page cache, then runs
each contender in its own process (after a `sync`, so no one pays for another's write-back), all of them in
turn for `--rounds` rounds, and prints the medians of wall, user and system time and peak RSS (the child's
ru_maxrss), with the median ratio of each round's wall time against that round's `cp` of the same file:

- cp:         copying the file (the floor for reading and writing every byte);
- naive:      safetensors.numpy.load_file, numpy `.T` copies, save_file (everything in memory at once);
- weightport: `weightport convert ... --plan PLAN` to Keras-layout safetensors and to a Keras .weights.h5.

The children cache their bytecode under the workdir (as an installed package has it), even where
PYTHONDONTWRITEBYTECODE is set. The plans are made once beforehand, untimed, by `weightport convert --dry-run --save-plan` given the
model's structure (torch's meta device for the source; for the .weights.h5, the Keras model whose
variable paths the file must use): the timed runs import no framework at all.

Targets (issue 3): weightport <= 2.0x cp wall time; peak RSS <= largest tensor + 300 MiB.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MiB = 1 << 20


def build_checkpoint(path):
    sys.path.insert(0, HERE)
    from llama_like import torch_structure

    from weightport.converter.checkpoint import TensorSource
    from weightport.converter.formats import write_checkpoint

    rng = np.random.default_rng(0)
    sources = [TensorSource(name, tuple(t.shape), np.float32,
                            lambda shape=tuple(t.shape): rng.random(shape, dtype=np.float32))
               for name, t in torch_structure().state_dict().items()]
    write_checkpoint(path, sources, metadata={"weightport_layout": "torch"})


def child_env(workdir):
    """The children's environment: bytecode cached (under ``workdir``) as an installed package has it, even where
    PYTHONDONTWRITEBYTECODE is set, so that no run pays ~0.4 s of CPU re-parsing weightport's sources."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(workdir, "pycache")
    return env


def run(cmd, env=None):
    """(wall seconds, peak RSS bytes, user seconds, system seconds) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss * 1024, usage.ru_utime, usage.ru_stime


NAIVE = """
import sys, numpy as np
from safetensors.numpy import load_file, save_file
tensors = load_file(sys.argv[1])
save_file({k: np.ascontiguousarray(v.T) if v.ndim == 2 else v for k, v in tensors.items()}, sys.argv[2])
"""


def make_plan(cli, src, dst, plan, *structure):
    if not os.path.exists(plan):
        subprocess.run([cli, "convert", src, dst, *structure, "--dry-run", "--save-plan", plan, "--quiet"],
                       check=True, env={**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")})


def run_rounds(commands, outputs, count, env):
    """name -> [run(...) per round], every command in turn ``count`` times, each after a ``sync``."""
    rounds = {name: [] for name in commands}
    subprocess.run([sys.executable, "-c", "import weightport.cli"], env=env, check=True)  # cache the bytecode
    print("load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()), flush=True)
    for _ in range(count):  # alternating: a busy moment of the machine hits cp as much as the others
        for name, cmd in commands.items():
            if os.path.exists(outputs[name]):
                os.remove(outputs[name])
            subprocess.run(["sync"], check=True)
            rounds[name].append(run(cmd, env))
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return rounds


def check_outputs(source, work, commands):
    """A converted kernel equals the transposed source, in each output that was written."""
    from weightport import load

    name = "model.layers.0.mlp.down_proj.weight"
    if "weightport -> safetensors" in commands:
        converted = load(work("keras.safetensors"))
        assert np.array_equal(source[name].T, converted[name.replace(".weight", "/kernel")]), "kernel is wrong"
        print("check: the converted kernel equals the transposed source (safetensors)")
    if "weightport -> .weights.h5" in commands:
        import h5py

        with open(work("plan_h5.json")) as f:
            step = next(s for s in json.load(f)["steps"] if s["source"] == name.rsplit(".", 1)[0])
        with h5py.File(work("keras.weights.h5"), "r") as h5:
            assert np.array_equal(source[name].T, h5[step["target_names"]["kernel"]][...]), "h5 kernel is wrong"
        print("check: the converted kernel equals the transposed source (.weights.h5)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(HERE, "_work"))
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every contender in turn (alternating with cp); medians are quoted")
    parser.add_argument("--only", default=None,
                        help="comma-separated contenders whose name contains one of these words (cp always runs)")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    work = lambda name: os.path.join(args.workdir, name)  # noqa: E731
    src = work("llama_torch.safetensors")
    if not os.path.exists(src):  # in a child: Linux hands a parent's resident size to the ru_maxrss of its children
        print("building the checkpoint...", flush=True)
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {HERE!r}); import convert_large; "
                        f"convert_large.build_checkpoint({src!r})"], check=True)
    from weightport import load

    source = load(src)
    largest = max(source.source(n).nbytes for n in source)
    cli = os.path.join(os.path.dirname(sys.executable), "weightport")
    structure = os.path.join(HERE, "llama_like.py")
    print("planning (untimed)...", flush=True)
    make_plan(cli, src, work("keras.safetensors"), work("plan_safetensors.json"), "--to", "keras",
              "--model", f"{structure}:torch_structure")
    if not args.only or any(w in "weightport -> .weights.h5" for w in args.only.split(",")):
        make_plan(cli, src, work("keras.weights.h5"), work("plan_h5.json"), "--model",
                  f"{structure}:torch_structure", "--like", f"{structure}:keras_structure")
    with open(src, "rb") as f:  # warm the page cache, through a small buffer (see above)
        buffer = bytearray(4 * MiB)
        while f.readinto(buffer):
            pass

    outputs = {"cp": "copy.safetensors", "naive numpy pipeline": "naive.safetensors",
               "weightport -> safetensors": "keras.safetensors", "weightport -> .weights.h5": "keras.weights.h5"}
    commands = {
        "cp": ["cp", src, work(outputs["cp"])],
        "naive numpy pipeline": [sys.executable, "-c", NAIVE, src, work(outputs["naive numpy pipeline"])],
        "weightport -> safetensors": [cli, "convert", src, work(outputs["weightport -> safetensors"]),
                                      "--plan", work("plan_safetensors.json"), "--quiet"],
        "weightport -> .weights.h5": [cli, "convert", src, work(outputs["weightport -> .weights.h5"]),
                                      "--plan", work("plan_h5.json"), "--quiet"],
    }
    words = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    commands = {n: c for n, c in commands.items() if not words or n == "cp" or any(w in n for w in words)}
    rounds = run_rounds(commands, {n: work(o) for n, o in outputs.items()}, args.rounds, child_env(args.workdir))
    results = {name: [statistics.median(r[i] for r in runs) for i in range(4)] for name, runs in rounds.items()}
    ratios = {name: statistics.median(r[0] / c[0] for r, c in zip(runs, rounds["cp"])) for name, runs in rounds.items()}
    budget = largest + 300 * MiB
    print(f"checkpoint: {source.nbytes / 1e9:.2f} GB float32, largest tensor {largest / MiB:.0f} MiB; "
          f"RSS budget (largest + 300 MiB) {budget / MiB:.0f} MiB; medians of {args.rounds} alternating rounds")
    print(f"{'':28} {'wall s':>8} {'x cp':>6} {'user s':>7} {'sys s':>7} {'peak RSS MiB':>13} {'x budget':>9}  "
          "walls")
    for name, (wall, rss, user, system) in results.items():
        walls = " ".join(f"{r[0]:.2f}" for r in rounds[name])
        print(f"{name:28} {wall:8.2f} {ratios[name]:6.2f} {user:7.2f} {system:7.2f} {rss / MiB:13.0f} "
              f"{rss / budget:9.2f}  {walls}")
    check_outputs(source, work, commands)
    if not args.keep:
        for f in outputs.values():
            if os.path.exists(work(f)):
                os.remove(work(f))


if __name__ == "__main__":
    main()
