"""Where a backward's dx from the buffer cache should start within a page (Plan.dx_page_shift).

x and dout are placed at the same offset within a page (16 bytes, where glibc's large
allocations start), as a user's arrays usually are; each backward's new dx (a plain call, the
previous result dropped) starts dx_page_shift bytes past that offset. Times are medians of
interleaved rounds (fastbn._bench.time_calls), relative to dx_page_shift = 0 (dx at x's offset).

    python benchmarks/dx_placement.py
"""
import numpy as np

import fastbn
from fastbn import _bench, _planner

SHIFTS = (0, 1024, 2048)
CASES = [  # op, shape, dtype, layout (the caches' 1 MiB threshold: arrays at least that large)
    ("spatial_batchnorm", (50, 32, 32, 3), "float64", "NHWC"),
    ("spatial_batchnorm", (64, 32, 32, 3), "float64", "NHWC"),
    ("spatial_batchnorm", (50, 32, 32, 16), "float32", "NHWC"),
    ("spatial_batchnorm", (50, 3, 32, 32), "float64", "NCHW"),
    ("layernorm", (2048, 256), "float32", None),
    ("spatial_batchnorm", (32, 56, 56, 64), "float32", "NHWC"),
    ("spatial_batchnorm", (32, 64, 56, 56), "float32", "NCHW"),
    ("spatial_batchnorm", (32, 64, 56, 56), "float64", "NCHW"),
    ("batchnorm", (4096, 4096), "float32", None),
    ("batchnorm", (65536, 256), "float32", None),
]


def main():
    print(f"CPU {_bench.cpu_model()} | threads {fastbn.get_num_threads()} | backward time / time with dx at x's offset")
    rng = np.random.default_rng(0)
    for op, shape, dtype, layout in CASES:
        x, dout = _bench.at_page_offset(shape, dtype, 16), _bench.at_page_offset(shape, dtype, 16)
        x[...] = rng.standard_normal(shape)
        dout[...] = rng.standard_normal(shape)
        C = shape[1] if layout == "NCHW" else shape[-1]
        gamma, beta = np.ones(C, dtype), np.zeros(C, dtype)
        if op == "layernorm":
            _, cache = fastbn.layernorm_forward(x, gamma, beta, {})
            backward = fastbn.layernorm_backward
        elif op == "batchnorm":
            _, cache = fastbn.batchnorm_forward(x, gamma, beta, {"mode": "train"})
            backward = fastbn.batchnorm_backward
        else:
            _, cache = fastbn.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train", "layout": layout})
            backward = fastbn.spatial_batchnorm_backward

        def at(shift, backward=backward, cache=cache, dout=dout):
            def call():
                with _planner.override(dx_page_shift=shift):
                    return backward(dout, cache)
            return call

        times = _bench.time_calls({s: at(s) for s in SHIFTS}, repeat=9, min_time=0.002, max_time=1.0)
        name = f"{op} {layout or ''} {'x'.join(map(str, shape))} {dtype}".replace("  ", " ")
        print(f"  {name:42s} dx at +0: {times[0] * 1e3:8.3f} ms  "
              + "  ".join(f"+{s}: {times[s] / times[0]:.2f}" for s in SHIFTS[1:]), flush=True)


if __name__ == "__main__":
    main()
