"""Builds esper_fast's two pybind11 modules.

* ``esper_fast._C``      - CPU kernels (:data:`CPU_SOURCES`: one entry file per op, the kernel
  registry csrc/cpu_dispatch.cpp, the bindings; + the SIMD builds of csrc/select_cpu_simd.cpp), always
  built with the host compiler. select_cpu_simd.cpp is compiled once per instruction set
  (:data:`SIMD_BUILDS`, x86-64: AVX-512 and AVX2 next to the generic one), each with its own
  ``-march`` and namespace; cpu_dispatch.cpp picks one at run time.
* ``esper_fast._C_score`` - the CPU scoring op of the PPO update (csrc/score_cpu.cpp), always built.
* ``esper_fast._C_cuda`` - CUDA kernels (csrc/*.cu), built with nvcc through ninja for sm_80
  and sm_90 (+ compute_90 PTX) where it can be used: nvcc is found (``$CUDA_HOME/bin/nvcc`` or ``nvcc``
  on PATH) *and* a GPU is visible (``/dev/nvidia0`` or ``nvidia-smi -L`` lists one).
  ``ESPER_FAST_CUDA=1`` builds it whenever nvcc exists (a compile check; an error without nvcc),
  ``ESPER_FAST_CUDA=0`` never builds it.

Rebuilds follow the headers: each extension's ``depends`` lists csrc/*.h (and *.cuh), so a header
edit rebuilds the modules that include it (setuptools compares their times with the built module; an
up-to-date module, SIMD objects included, is skipped), and the CUDA objects carry nvcc's own
dependency files (``-MD -MF``, ninja ``deps = gcc``), so ninja recompiles a .cu when a header it
includes changes.

Every module prints what it builds and how long it took (``pip install -v`` shows these lines; pip
hides a build's output otherwise).

Neither module links libtorch: they take raw pointers (and the caller's CUDA stream), so one build
serves every torch version.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pybind11
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.modified import newer_group
except ImportError:  # setuptools < 69
    from distutils.dep_util import newer_group

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
CUDA_ARCHS = ("80", "90")
CXX_FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden"]
HEADERS = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.h"))
CUDA_HEADERS = HEADERS + sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cuh"))
CUDA_SOURCES = [
    "csrc/select_cuda.cu",
    "csrc/select_actions_cuda.cu",
    "csrc/select_actions_v2_cuda.cu",
    "csrc/bindings_cuda.cpp",
]
SIMD_SOURCE = "csrc/select_cpu_simd.cpp"
CPU_SOURCES = [
    "csrc/cpu_dispatch.cpp",  # kernel registry and choice, OpenMP threshold (run_split: cpu_dispatch.h)
    "csrc/select_op_cpu.cpp",
    "csrc/select_actions_cpu.cpp",
    "csrc/select_actions_v2_cpu.cpp",
    "csrc/bindings_cpu.cpp",
]
# name -> (lanes, extra flags). -ffp-contract=off: no FMA contraction, so every build rounds alike.
SIMD_BUILDS = {
    "avx512": (16, ["-march=x86-64-v4", "-mtune=generic"]),
    "avx2": (8, ["-march=x86-64-v3", "-mtune=generic"]),
    "generic": (4, []),
}
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")


def simd_builds() -> dict[str, tuple[int, list[str]]]:
    """The SIMD builds for this machine's architecture (only the generic one off x86-64)."""
    return SIMD_BUILDS if IS_X86_64 else {"generic": SIMD_BUILDS["generic"]}


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_ninja() -> str:
    try:
        import ninja  # the PyPI package ships the binary

        return str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        found = shutil.which("ninja")
        if found is None:
            raise RuntimeError("building esper_fast._C_cuda needs ninja (pip install ninja)") from None
        return found


def say(message: str) -> None:
    print(f"[esper_fast build] {message}", file=sys.stderr, flush=True)


def gpu_visible() -> bool:
    """An NVIDIA GPU this machine can use: ``/dev/nvidia0`` exists or ``nvidia-smi -L`` lists one."""
    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


CUDA_SKIPPED = ""
"""Why esper_fast._C_cuda is not built (said once, when build_ext runs; setup.py is read several times)."""


def want_cuda() -> bool:
    """Whether to build ``esper_fast._C_cuda`` (see the module docstring); sets :data:`CUDA_SKIPPED`."""
    global CUDA_SKIPPED
    flag = os.environ.get("ESPER_FAST_CUDA", "auto").strip().lower()
    if flag in ("0", "false", "no", "off"):
        CUDA_SKIPPED = "ESPER_FAST_CUDA=0"
        return False
    forced = flag in ("1", "true", "yes", "on")
    if find_nvcc() is None:
        if forced:
            raise RuntimeError("ESPER_FAST_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        CUDA_SKIPPED = "nvcc not found (CPU and Triton backends only)"
        return False
    if not forced and not gpu_visible():
        CUDA_SKIPPED = "nvcc found but no GPU visible (ESPER_FAST_CUDA=1 builds it anyway)"
        return False
    return True


def ninja_file(nvcc: str, build_dir: Path, target: Path) -> str:
    includes = " ".join(f"-I{p}" for p in (CSRC, pybind11.get_include(), sysconfig.get_paths()["include"]))
    gencode = " ".join(f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS)
    gencode += f" -gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"
    host = "-Xcompiler -fPIC -Xcompiler -fvisibility=hidden"
    return "\n".join(
        [
            f"nvcc = {nvcc}",
            f"flags = -O3 -std=c++17 {host} {includes}",
            f"gencode = {gencode}",
            "rule compile",
            "  command = $nvcc -MD -MF $out.d $flags $gencode -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = NVCC $out",
            "rule link",
            "  command = $nvcc -shared $gencode $in -o $out",
            "  description = LINK $out",
            *[f"build {build_dir}/{Path(src).stem}.o: compile {ROOT / src}" for src in CUDA_SOURCES],
            f"build {target}: link " + " ".join(f"{build_dir}/{Path(src).stem}.o" for src in CUDA_SOURCES),
            "",
        ]
    )


class BuildExt(build_ext):
    """Builds the CPU module with setuptools and the CUDA module with nvcc + ninja."""

    def build_extensions(self) -> None:
        if CUDA_SKIPPED:
            say(f"not building esper_fast._C_cuda: {CUDA_SKIPPED}")
        total = len(self.extensions)
        for i, ext in enumerate(self.extensions, 1):
            what = (
                "CUDA kernels, nvcc for sm_" + "/sm_".join(CUDA_ARCHS) if ext.name.endswith("_cuda") else "CPU kernels"
            )
            say(f"[{i}/{total}] {ext.name} ({what}: {', '.join(ext.sources)}) ...")
            t0 = time.perf_counter()
            self.build_extension(ext)
            say(f"[{i}/{total}] {ext.name} done in {time.perf_counter() - t0:.1f} s")

    def build_extension(self, ext: Extension) -> None:
        if not self.force and not newer_group(list(ext.sources) + list(ext.depends), self.get_ext_fullpath(ext.name)):
            say(f"{ext.name} is up to date (no source or header newer than the module)")
            return
        if ext.name == "esper_fast._C":
            self.build_simd_objects(ext)
        if ext.name != "esper_fast._C_cuda":
            super().build_extension(ext)
            return
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)
        build_dir = (Path(self.build_temp) / "cuda").resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        (build_dir / "build.ninja").write_text(ninja_file(find_nvcc(), build_dir, target))
        subprocess.run([find_ninja(), "-C", str(build_dir)], check=True)

    def build_simd_objects(self, ext: Extension) -> None:
        """Compiles SIMD_SOURCE once per ISA build (own flags, namespace) into ext.extra_objects."""
        objects = []
        for name, (width, flags) in simd_builds().items():
            macros = [("EF_SIMD_NS", f"simd_{name}"), ("EF_SIMD_WIDTH", str(width)), ("EF_SIMD_NAME", f'"{name}"')]
            objects += self.compiler.compile(
                [SIMD_SOURCE],
                output_dir=str(Path(self.build_temp) / f"simd_{name}"),
                macros=macros,
                include_dirs=ext.include_dirs,
                depends=HEADERS,
                extra_postargs=CXX_FLAGS + ["-ffp-contract=off", "-Wno-maybe-uninitialized"] + flags,
            )
        ext.extra_objects = list(ext.extra_objects or []) + objects


extensions = [
    Extension(
        "esper_fast._C",
        sources=CPU_SOURCES,
        depends=HEADERS + [SIMD_SOURCE],
        include_dirs=[str(CSRC), pybind11.get_include()],
        define_macros=[("EF_X86_SIMD", "1")] if IS_X86_64 else [],
        extra_compile_args=CXX_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
        language="c++",
    ),
    Extension(  # the PPO update's scoring op (csrc/score_row.h), a module of its own
        "esper_fast._C_score",
        sources=["csrc/score_cpu.cpp", "csrc/bindings_score.cpp"],
        include_dirs=[str(CSRC), pybind11.get_include()],
        depends=[str(CSRC / n) for n in ("score_row.h", "select_row.h", "philox.h")],
        extra_compile_args=CXX_FLAGS + ["-fopenmp"],
        extra_link_args=["-fopenmp"],
        language="c++",
    ),
]
if want_cuda():
    extensions.append(
        Extension(
            "esper_fast._C_cuda",
            sources=CUDA_SOURCES,
            depends=CUDA_HEADERS,
        )
    )

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
