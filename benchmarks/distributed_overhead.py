"""The cost of synchronizing batchnorm: each rank's distributed forward + backward against the local
forward + backward of its own part, timed in the same run, one thread per rank.

    OMP_NUM_THREADS=1 mpiexec -n 2 python benchmarks/distributed_overhead.py [--rows 65536]
        [--features 256] [--dtype float32] [--repeats 30]

The whole batch (rows x features) is split evenly between the ranks. Each repeat times, on every
rank at once (a barrier before each), the local fastbn.batchnorm_forward + batchnorm_backward of
the rank's part, then fastbn.distributed's pair on the same part; rank 0 prints the medians of
every rank and their ratio (the target: at most 1.3).
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import fastbn
import fastbn.distributed
from fastbn import _bench


def main(rows, features, dtype, repeats):
    comm = MPI.COMM_WORLD
    fastbn.set_num_threads(1)
    mine = np.array_split(np.arange(rows), comm.size)[comm.rank]
    rng = np.random.default_rng(comm.rank)
    x = rng.normal(1.0, 2.0, size=(len(mine), features)).astype(dtype)
    dout = rng.normal(size=x.shape).astype(dtype)
    gamma, beta = np.ones(features, dtype), np.zeros(features, dtype)

    def local():
        out, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        fastbn.batchnorm_backward(dout, cache)

    def synchronized():
        out, cache = fastbn.distributed.batchnorm_forward(x, gamma, beta, {"mode": "train"}, comm)
        fastbn.distributed.batchnorm_backward(dout, cache, comm)

    times = {"local": [], "distributed": []}
    for repeat in range(repeats + 2):  # the first two warm up
        for name, run in (("local", local), ("distributed", synchronized)):
            comm.Barrier()
            start = time.perf_counter()
            run()
            if repeat >= 2:
                times[name].append(time.perf_counter() - start)
    medians = comm.gather({name: float(np.median(t)) for name, t in times.items()}, root=0)
    if comm.rank == 0:
        print(f"batchnorm {rows}x{features} {dtype} split over {comm.size} ranks, 1 thread each, "
              f"median of {repeats}: forward + backward")
        for r, m in enumerate(medians):
            print(f"rank {r}: local {1e3 * m['local']:.2f} ms, distributed "
                  f"{1e3 * m['distributed']:.2f} ms, ratio {m['distributed'] / m['local']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=_bench.positive_int, default=65536)
    parser.add_argument("--features", type=_bench.positive_int, default=256)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=_bench.positive_int, default=30)
    args = parser.parse_args()
    main(args.rows, args.features, args.dtype, args.repeats)
