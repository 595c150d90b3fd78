"""Convert a sharded ~4 GB torch-layout checkpoint to Keras layout: serially, in 2 local processes, on a 2-worker Dask
LocalCluster, at two shard counts; wall time and peak RSS per worker, in one run.

    python benchmarks/convert_sharded.py [--gb 4.2] [--workdir DIR] [--outdir DIR] [--keep]

Builds the source (float32 Linear layers with biases, Llama-MLP-like shapes; 9 source shards) in a temporary
folder, then converts it with ``shard_size`` giving 8 and then 16 output shards. Each conversion runs in a
child process after a ``sync`` (so no run pays for another's write-back), the source's pages warm:

- serial:    ``wp.convert(..., shard_size=S)``; peak RSS is the child's (plans and writes every shard);
- 2 procs:   ``executor=ProcessPoolExecutor(2)`` (spawned); peak per worker is the largest of the workers'
             (``RUSAGE_CHILDREN`` once the pool has shut down), the driver's beside it;
- dask 2:    ``executor=client.get_executor()`` on ``LocalCluster(n_workers=2, threads_per_worker=1)``, started
             before the clock; peak per worker from each worker's own ``getrusage``, read after the run.

Target (issue 15): peak per worker <= largest tensor + 300 MiB, at 8 and at 16 shards. Speed-up on a
2-core machine is bounded by 2 and by the disk: the figures say what this one gives. Every output is
checked byte for byte against the serial one, and a kernel against the transposed source. The source is built
in a child process too: Linux hands a parent's resident size to the ru_maxrss of a child it forks, so a parent
holding the source's buffers would inflate every figure. ``--outdir /dev/shm`` writes the outputs to memory,
taking the disk out of the picture.
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

MiB = 1 << 20
HIDDEN, INTER = 2048, 5504  # per block: up (INTER, HIDDEN) + down (HIDDEN, INTER) + q/k/v/o (HIDDEN, HIDDEN)

DRIVER = r"""
import json, multiprocessing, os, resource, sys, time
from concurrent.futures import ProcessPoolExecutor
import weightport as wp

def main():
    mode, src, dst, shard = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    out = {}
    if mode == "serial":
        start = time.perf_counter()
        wp.convert(src, dst, to="keras", shard_size=shard, quiet=True)
        out["wall"] = time.perf_counter() - start
        out["workers"] = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]
    elif mode == "procs":
        start = time.perf_counter()
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
            wp.convert(src, dst, to="keras", shard_size=shard, executor=pool, quiet=True)
        out["wall"] = time.perf_counter() - start
        out["workers"] = [resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024]
    else:
        from dask.distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="8GiB",
                          host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
            client.wait_for_workers(2)
            start = time.perf_counter()
            wp.convert(src, dst, to="keras", shard_size=shard, executor=client.get_executor(), quiet=True)
            out["wall"] = time.perf_counter() - start
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
            out["workers"] = sorted(peaks.values())
    out["driver"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def build_source(folder, gb):
    """A torch-layout sharded checkpoint of about ``gb`` GB in 9 shards; (index path, bytes, largest tensor bytes)."""
    from weightport.converter.checkpoint import TensorSource
    from weightport.converter.formats import write_checkpoint

    shapes = {"mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}
    shapes.update({f"attn.{p}_proj": (HIDDEN, HIDDEN) for p in "qkvo"})
    per_block = sum(4 * (a * b + a) for a, b in shapes.values())
    blocks = max(1, round(gb * 1e9 / per_block))
    rng = np.random.default_rng(0)
    sources = []
    for i in range(blocks):
        for name, (out, inp) in shapes.items():
            for suffix, shape in (("weight", (out, inp)), ("bias", (out,))):
                sources.append(TensorSource(f"blocks.{i}.{name}.{suffix}", shape, np.float32,
                                            lambda shape=shape: rng.random(shape, dtype=np.float32)))
    total = sum(s.nbytes for s in sources)
    path = os.path.join(folder, "model.safetensors")
    write_checkpoint(path, sources, shard_size=total // 9 + 1, metadata={"weightport_layout": "torch"})
    return path + ".index.json", total, max(s.nbytes for s in sources)


def child(mode, src, dst, shard):
    """The driver's figures for one conversion, and the child's own wall time and peak RSS."""
    subprocess.run(["sync"], check=True)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", DRIVER, mode, src, dst, str(shard)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_files(a, b) -> bool:
    names = sorted(os.listdir(a))
    return names == sorted(os.listdir(b)) and all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)
                                                  for n in names)


def run_all(work, src, total, largest):
    """Every conversion, outputs under ``work``; the table."""
    budget = largest + 300 * MiB
    results = []
    for count in (8, 16):
        shard = total // count + 1
        reference = None
        for mode, label in (("serial", "serial"), ("procs", "2 processes"), ("dask", "dask, 2 workers")):
            out = os.path.join(work, f"{mode}-{count}")
            figures = child(mode, src, os.path.join(out, "model.safetensors"), shard)
            shards = len([n for n in os.listdir(out) if n.endswith(".safetensors")])
            same = True if reference is None else same_files(reference, out)
            results.append((count, label, figures, shards, same))
            if reference is None:
                reference = out
            else:
                shutil.rmtree(out)
        check_kernel(src, os.path.join(reference, "model.safetensors"))
        shutil.rmtree(reference)
    report(results, total, largest, budget)


CHECK = r"""
import sys, numpy as np, weightport as wp
with wp.load(sys.argv[1]) as a, wp.load(sys.argv[2]) as b:
    assert np.array_equal(a["blocks.0.mlp.down_proj.weight"].T, b["blocks.0.mlp.down_proj/kernel"]), "kernel is wrong"
"""


def check_kernel(src, out):
    """A converted kernel against the transposed source (in a child: reading it here would raise later figures)."""
    subprocess.run([sys.executable, "-c", CHECK, src, out], check=True)


def report(results, total, largest, budget):
    print(f"\nsource: {total / 1e9:.2f} GB float32 in 9 shards; largest tensor {largest / MiB:.0f} MiB; "
          f"budget per worker (largest + 300 MiB) {budget / MiB:.0f} MiB; {os.cpu_count()} CPUs")
    print(f"{'out shards':>10} {'executor':16} {'wall s':>7} {'GB/s':>6} {'x serial':>8} "
          f"{'peak RSS/worker MiB':>20} {'x budget':>8} {'driver MiB':>10} {'same bytes':>10}")
    serial = {}
    for count, label, figures, shards, same in results:
        serial.setdefault(count, figures["wall"])
        peak = max(figures["workers"])
        print(f"{shards:>10} {label:16} {figures['wall']:7.2f} {total / 1e9 / figures['wall']:6.2f} "
              f"{serial[count] / figures['wall']:8.2f} {'/'.join(f'{w / MiB:.0f}' for w in figures['workers']):>20} "
              f"{peak / budget:8.2f} {figures['driver'] / MiB:10.0f} {str(same):>10}")
    worst = max(max(f["workers"]) for _, _, f, _, _ in results)
    print(f"peak per worker at most {worst / MiB:.0f} MiB: {'within' if worst <= budget else 'OVER'} the budget; "
          f"every output {'identical to' if all(r[4] for r in results) else 'DIFFERENT from'} the serial one")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=4.2, help="source size in GB (default 4.2)")
    parser.add_argument("--workdir", default=None, help="where to build it (default: a temporary folder)")
    parser.add_argument("--outdir", default=None, help="where to write the outputs (default: beside the source)")
    parser.add_argument("--keep", action="store_true", help="keep the source")
    parser.add_argument("--build", nargs=2, metavar=("FOLDER", "GB"), help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    if args.build:
        print(json.dumps(build_source(args.build[0], float(args.build[1]))))
        return
    work = tempfile.mkdtemp(prefix="wp-sharded-", dir=args.workdir)
    out = tempfile.mkdtemp(prefix="wp-sharded-out-", dir=args.outdir) if args.outdir else work
    try:
        print("building the source...", flush=True)
        start = time.perf_counter()
        os.makedirs(os.path.join(work, "source"))
        built = subprocess.run([sys.executable, __file__, "--build", os.path.join(work, "source"), str(args.gb)],
                               check=True, capture_output=True, text=True)
        src, total, largest = json.loads(built.stdout.strip().splitlines()[-1])
        print(f"built in {time.perf_counter() - start:.1f} s; converting...", flush=True)
        folder = os.path.dirname(src)  # warm the source's pages, as a second conversion would find them (in a
        # child: a buffer here would raise this process's size, and with it every later child's ru_maxrss)
        subprocess.run(["cat", *(os.path.join(folder, n) for n in sorted(os.listdir(folder)))],
                       stdout=subprocess.DEVNULL, check=True)
        run_all(out, src, total, largest)
    finally:
        if out != work:
            shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
