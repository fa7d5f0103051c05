"""Build script for fastbn: compiles ``fastbn/_kernels.pyx``, with OpenMP when it works, the
buffer cache (``fastbn/_buffers.pyx``), the glue's array checks (``fastbn/_arrays.pyx``) and the
Python modules every call runs through (GLUE).

Environment switches
--------------------
FASTBN_NO_OPENMP=1
    Build the kernels serially, without probing for OpenMP.
FASTBN_DEBUG=1
    Turn Cython's bounds, wraparound and initialisation checks back on and build with ``-O0 -g``
    (a release build has ``-O3 -g0``: no debug information in the extension).
FASTBN_SANITIZE=address,undefined (or thread, ...)
    Instrument the kernels with these GCC/Clang sanitizers (``-fsanitize=...
    -fno-omit-frame-pointer -fno-sanitize-recover=all -g``, and ``-fno-wrapv`` over Python's
    ``-fwrapv`` so that signed overflow is checked too); undefined behaviour then aborts.
    A non-instrumented Python must preload the sanitizer runtime (see docs/development.md).
"""
import ast
import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BUILD_INFO = "_build_info.py"
PLANNER = "fastbn/_planner.py"
# The modules of validation, dispatch and results that every public call runs through. Cython
# compiles them from these .py files, which stay their only source, for a lower fixed cost per
# call (docs/decisions.md, "Fixed cost per call, fourth session").
GLUE = ["_backends", "_compiled", "_dispatch", "_memory", "_ops", "_planner", "_results",
        "_threads", "_validation"]
OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        printf("%d", n);
        return n > 0 ? 0 : 1;
    }
    """
)


def _flag_enabled(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _openmp_flags(compiler):
    """Return (compile_args, link_args) that build and run an OpenMP program, or None."""
    if compiler.compiler_type == "msvc":
        candidates = [(["/openmp"], [])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    for compile_args, link_args in candidates:
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe_openmp.c")
            with open(source, "w") as f:
                f.write(OPENMP_PROBE)
            try:
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_args)
                exe = os.path.join(tmp, "probe_openmp")
                compiler.link_executable(objects, exe, extra_postargs=link_args)
                subprocess.run([exe], check=True, capture_output=True, timeout=60)
            except Exception:  # any failure to compile, link or run means no OpenMP
                continue
        return compile_args, link_args
    return None


class BuildExt(build_ext):
    """Probe OpenMP with the compiler setuptools uses and record the build configuration."""

    def build_extensions(self):
        debug = _flag_enabled("FASTBN_DEBUG")
        if self.compiler.compiler_type == "msvc":
            base_args = ["/Od"] if debug else ["/O2"]
        else:
            # no fused multiply-add contraction: every instruction-set path of the kernels
            # computes the same bits (see fastbn/_src/simd.h); a release build has no debug
            # information (-g0 overrides the -g of Python's own CFLAGS)
            base_args = (["-O0", "-g"] if debug else ["-O3", "-g0"]) + ["-ffp-contract=off"]
        sanitize = os.environ.get("FASTBN_SANITIZE", "").strip()
        sanitize_args = []
        if sanitize and self.compiler.compiler_type != "msvc":
            sanitize_args = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer",
                             "-fno-sanitize-recover=all", "-fno-wrapv", "-g"]
        omp = None
        if _flag_enabled("FASTBN_NO_OPENMP"):
            reason = "FASTBN_NO_OPENMP is set"
        else:
            omp = _openmp_flags(self.compiler)
            reason = "the OpenMP probe failed to compile, link or run"
        if omp is None:
            warnings.warn(
                f"fastbn: building the kernels WITHOUT OpenMP ({reason}); "
                "they will run on a single thread.",
                stacklevel=1,
            )
            compile_args, link_args = [], []
        else:
            compile_args, link_args = omp
        glue = {f"fastbn.{module}" for module in GLUE}
        for ext in self.extensions:
            if ext.name in glue:  # C that Cython generates from Python: no OpenMP, not instrumented
                ext.extra_compile_args, ext.extra_link_args = list(base_args), []
                continue
            ext.extra_compile_args = base_args + sanitize_args + compile_args
            ext.extra_link_args = sanitize_args[:1] + link_args
        self._write_build_info(
            openmp=omp is not None,
            compile_args=base_args + sanitize_args + compile_args,
            link_args=sanitize_args[:1] + link_args,
            debug=debug,
            sanitize=sanitize if sanitize_args else "",
            glue=_glue_digests(),
        )
        super().build_extensions()

    def _write_build_info(self, **info):
        info["compiler"] = " ".join(getattr(self.compiler, "compiler_so", [self.compiler.compiler_type]))
        info["python"] = sys.version.split()[0]
        package_dir = os.path.join(self.build_lib, "fastbn")
        os.makedirs(package_dir, exist_ok=True)
        with open(os.path.join(package_dir, BUILD_INFO), "w") as f:
            f.write('"""Generated by setup.py at build time; do not edit."""\n')
            f.write(f"BUILD_INFO = {info!r}\n")

    def run(self):
        super().run()
        # Also put the built extension beside the sources (setuptools does this itself for
        # --inplace), so that `python -m fastbn` run from a checkout after `pip install .`
        # uses the compiled kernels rather than a source tree without them.
        if not self.inplace:
            for ext in self.extensions:
                built = self.get_ext_fullpath(ext.name)
                self.copy_file(built, os.path.join("fastbn", os.path.basename(built)))
        self.copy_file(os.path.join(self.build_lib, "fastbn", BUILD_INFO), os.path.join("fastbn", BUILD_INFO))


def _glue_digests():
    """SHA-256 of each GLUE module's source as it is compiled: the test suite checks them against
    the sources, so that tests never run an extension built from an older version of a module."""
    digests = {}
    for module in GLUE:
        with open(f"fastbn/{module}.py", "rb") as f:
            digests[module] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _compiled_constants():
    """The planner's compile-time constants of the loops (COMPILED in fastbn/_planner.py) as
    define_macros, read from the file: importing fastbn at build time would import the package
    and its kernels (absent, or those of an older build)."""
    with open(PLANNER) as f:
        module = ast.parse(f.read(), PLANNER)
    assigned = {target.id: node.value for node in module.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    if "COMPILED" not in assigned:
        raise RuntimeError(f"{PLANNER} has no COMPILED = {{...}} mapping")
    constants = ast.literal_eval(assigned["COMPILED"])
    for name, value in constants.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise RuntimeError(f"{PLANNER}: COMPILED[{name!r}] must be an integer, got {value!r}")
    return [(name, str(value)) for name, value in constants.items()]


debug_build = _flag_enabled("FASTBN_DEBUG")
extensions = [
    Extension(
        "fastbn._kernels",
        sources=["fastbn/_kernels.pyx"],
        depends=[
            "fastbn/_src/loops.h",
            "fastbn/_src/loops_isa.h",
            "fastbn/_src/loops_template.c",
            "fastbn/_src/simd.h",
            "fastbn/_src/omp_shim.h",
            "fastbn/_src/scratch.h",
            PLANNER,  # its COMPILED constants are macros of the loops
        ],
        include_dirs=[np.get_include(), "fastbn/_src"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"), *_compiled_constants()],
    ),
    Extension(
        "fastbn._arrays",
        sources=["fastbn/_arrays.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    ),
    Extension(
        "fastbn._buffers",
        sources=["fastbn/_buffers.pyx"],
        depends=["fastbn/_src/buffer_pool.h"],
        include_dirs=[np.get_include(), "fastbn/_src"],
        # the memory-handler API of NEP 49 is NumPy 1.22's
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
                       ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")],
    ),
]

glue = [Extension(f"fastbn.{module}", sources=[f"fastbn/{module}.py"]) for module in GLUE]

setup(
    ext_modules=cythonize(
        glue,
        # Python semantics throughout: annotations (``n: int``) are documentation, not C types
        compiler_directives={"language_level": 3, "annotation_typing": False},
    ) + cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug_build,
            "wraparound": debug_build,
            "initializedcheck": debug_build,
            "nonecheck": debug_build,
            "cdivision": True,
            "embedsignature": True,
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
