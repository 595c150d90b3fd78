"""Load a BERT-base Hugging Face folder into keras-hub's BertBackbone: keras-hub's converter against weightport.

    .venv/bin/python benchmarks/hf_to_kerashub.py [--backend torch|jax] [--small] [--repeats 3] [--profile]

Writes a random-weight transformers BertModel (BERT-base: hidden 768, 12 layers, 12 heads, intermediate
3072, vocab 30522, 512 positions, 2 segments; --small: a tiny one) with `save_pretrained` (safetensors),
warms the page cache, then runs each contender in a fresh process, alternating, --repeats times:

- keras-hub:  `BertBackbone.from_preset(folder)`, which builds the backbone and ports the weights (its
  `convert_bert.convert_weights` call, timed alone as its "port"; the rest of from_preset is its "build");
- weightport: `BertBackbone(...)` with the same config (build), then `weightport.port(model.safetensors, it)`.

Each child reports its import time, build and port time, and peak RSS (VmHWM), with the RSS after imports
so the frameworks' own footprint can be told apart. Medians (with ranges) and the weightport / keras-hub
ratio are printed; every run's weights are compared bitwise with keras-hub's of the same repetition.
--profile: one more weightport child, its port call under cProfile; prints the top 10 entries.

Target (issue): weightport no slower than keras-hub's converter, the weights bitwise equal.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
            intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
SMALL = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=64, max_position_embeddings=32, type_vocab_size=2)


def write_folder(folder, config):
    """save_pretrained of a BertModel with every weight random (no LayerNorm left at ones: a stricter check)."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**config))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.02)
    model.save_pretrained(folder)


def rss_mib(field):
    """VmRSS (now) or VmHWM (peak) of this process, in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def build(keras_hub, c):
    """The backbone from_preset builds: keras-hub's convert_backbone_config of the same config."""
    return keras_hub.models.BertBackbone(
        vocabulary_size=c["vocab_size"], num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        hidden_dim=c["hidden_size"], intermediate_dim=c["intermediate_size"],
        max_sequence_length=c["max_position_embeddings"], num_segments=c["type_vocab_size"])


def timed_converter():
    """from_preset builds the backbone, then calls convert_bert.convert_weights: time that call (its port) alone."""
    from keras_hub.src.utils.transformers import convert_bert

    seconds, convert = [0.0], convert_bert.convert_weights

    def timed(*args):
        start = time.perf_counter()
        convert(*args)
        seconds[0] = time.perf_counter() - start

    convert_bert.convert_weights = timed
    return seconds


def child(kind, folder, config, weights_out, profile):
    """One contender in this fresh process; prints its figures as JSON, then saves its weights untimed."""
    import cProfile
    import pstats
    import warnings

    start = time.perf_counter()
    import keras
    import keras_hub
    import numpy as np
    wp = __import__("weightport") if kind == "weightport" else None  # keras-hub's child does without
    imported, rss_imports = time.perf_counter(), rss_mib("VmRSS")
    if wp is None:
        ported = timed_converter()
        backbone = keras_hub.models.BertBackbone.from_preset(folder)
    else:
        backbone, built, profiler = build(keras_hub, config), time.perf_counter(), cProfile.Profile()
        with warnings.catch_warnings():  # the pooler the file has and the backbone lacks: reported, not warned
            warnings.simplefilter("ignore", wp.WeightportWarning)
            profile and profiler.enable()
            wp.port(os.path.join(folder, "model.safetensors"), backbone, quiet=True)
            profiler.disable()
        ported = [time.perf_counter() - built]
    done, peak = time.perf_counter(), rss_mib("VmHWM")
    print(json.dumps(dict(imports=imported - start, build=done - imported - ported[0], port=ported[0],
                          work=done - imported, total=done - start, rss_imports=rss_imports, peak=peak,
                          grown=peak - rss_imports)))
    if profile:  # to stderr, so stdout stays one JSON line
        for order in ("cumulative", "tottime"):
            pstats.Stats(profiler, stream=sys.stderr).sort_stats(order).print_stats(int(os.environ.get("WP_PROFILE_TOP", "10")))
    np.savez(weights_out, **{v.path: keras.ops.convert_to_numpy(v.value) for v in backbone.weights})


def run_child(kind, folder, small, weights_out, profile=False):
    """This script again, as a child: its JSON figures (or, profiled, its stderr).

    Children keep compiled bytecode (in the run's own folder) even where PYTHONDONTWRITEBYTECODE is set, as an
    installed package does: neither contender's time then includes compiling the modules it imports lazily."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, folder, weights_out]
    cmd += (["--small"] if small else []) + (["--profile"] if profile else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=ROOT, PYTHONPYCACHEPREFIX=os.path.join(os.path.dirname(folder), "pycache"))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return out.stderr if profile else json.loads(out.stdout.strip().splitlines()[-1])


def assert_bitwise_equal(reference, ours):
    import numpy as np

    with np.load(reference) as a, np.load(ours) as b:
        assert sorted(a.files) == sorted(b.files), set(a.files) ^ set(b.files)
        for name in a.files:
            x, y = a[name], b[name]
            assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes()), name
        return len(a.files)


def fmt(values, digits):
    """median [min-max]"""
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report(results, repeats, backend, nbytes, count):
    print(f"backend {backend}; model.safetensors {nbytes / MiB:.0f} MiB, {count} Keras variables; "
          f"median [min-max] of {repeats} runs each, alternating; weights bitwise equal in every run")
    rows = {"imports s": "imports", "build s": "build", "port s": "port", "build+port s": "work",
            "total s (with imports)": "total", "RSS after imports MiB": "rss_imports", "peak RSS MiB": "peak",
            "peak - after imports MiB": "grown"}
    print(f"{'':27}{'keras-hub':>22}{'weightport':>22}{'wp / kh':>9}")
    for label, key in rows.items():
        kh, wp = ([r[key] for r in results[kind]] for kind in ("keras-hub", "weightport"))
        digits = 0 if "MiB" in label else 2
        ratio = statistics.median(wp) / statistics.median(kh)
        print(f"{label:27}{fmt(kh, digits):>22}{fmt(wp, digits):>22}{ratio:9.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "torch"), choices=("torch", "jax"))
    parser.add_argument("--small", action="store_true", help="a tiny BERT, for a quick check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also profile one weightport child (cProfile)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    config = SMALL if args.small else BASE
    if args.child:
        return child(*args.child[:2], config, args.child[2], args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        folder, npz = os.path.join(tmp, "bert"), lambda kind: os.path.join(tmp, f"{kind}.npz")  # noqa: E731
        write_folder(folder, config)
        path = os.path.join(folder, "model.safetensors")
        with open(path, "rb") as f:  # warm the page cache: neither contender pays for the first read
            while f.read(64 * MiB):
                pass
        results = {"keras-hub": [], "weightport": []}
        for kind in results:  # untimed: each compiles its modules' bytecode once, as installing a package does
            run_child(kind, folder, args.small, npz(kind))
        for _ in range(args.repeats):
            for kind in results:
                results[kind].append(run_child(kind, folder, args.small, npz(kind)))
            count = assert_bitwise_equal(npz("keras-hub"), npz("weightport"))
        report(results, args.repeats, args.backend, os.path.getsize(path), count)
        if args.profile:
            profile = run_child("weightport", folder, args.small, npz("profiled"), profile=True)
            print("\nweightport.port alone under cProfile (one more child): top 10 by cumulative, then own time")
            print(profile[profile.index("   Ordered by"):].rstrip())


if __name__ == "__main__":
    main()
