#!/usr/bin/env python3
"""``make train`` / ``make test`` without make: ``python3 tools/bootstrap.py {train,test,env} [args...]``.

Needs only Python >= 3.10 (standard library). Each command makes sure of, in order:

1. a project-local venv, ``.venv`` (``$ESPER_FAST_VENV`` overrides the path). When the Python
   running this script can already import torch, the venv is created with
   ``--system-site-packages`` so that torch is reused instead of downloaded;
2. torch: if the venv cannot import it, ``pip install torch==2.13.0`` (the CPU build where pip's
   index serves it; ``$TORCH_INDEX_URL`` passes an index to that one install, e.g. PyTorch's CPU
   wheel index, because PyPI's Linux torch wheel is the multi-GB CUDA build);
3. esper_fast itself, editable, with the extras of the command (``train``: tensorboard and
   matplotlib; ``test``: also pytest, scipy, gymnasium and triton), which compiles the C++
   extension (``esper_fast._C``; ``esper_fast._C_cuda`` where a GPU is visible or
   ``ESPER_FAST_CUDA=1``). This step is skipped when nothing it depends on changed since the last
   install (a stamp in the venv: setup.py, pyproject.toml, csrc/*, the extras).

Then ``train`` runs ``esper-fast train ARGS`` (the default run: no ARGS) and ``test`` runs
``python -m pytest -q ARGS``. pytest's exit code 5 ("no tests collected") is printed as such and
counted as success (exit 0); every other code is passed on. ``env`` only does steps 1-3.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
EXTRAS = {"train": "train", "test": "test,triton", "env": "train"}


def say(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def run(cmd: list[str], **kw) -> int:
    say("$ " + " ".join(cmd))
    return subprocess.run(cmd, **kw).returncode


def check(cmd: list[str], **kw) -> None:
    rc = run(cmd, **kw)
    if rc:
        say(f"failed (exit {rc}): {' '.join(cmd)}")
        sys.exit(rc)


def venv_python(path: Path) -> Path:
    return path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def can_import(python: Path | str, module: str) -> bool:
    return subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0


def ensure_venv() -> Path:
    path = Path(os.environ.get("ESPER_FAST_VENV") or ROOT / ".venv")
    python = venv_python(path)
    if not python.exists():
        reuse = can_import(sys.executable, "torch")
        say(f"creating {path}" + (" (--system-site-packages: reusing this Python's torch)" if reuse else ""))
        venv.EnvBuilder(with_pip=True, system_site_packages=reuse).create(path)
    return python


def ensure_torch(python: Path) -> None:
    if can_import(python, "torch"):
        return
    cmd = [str(python), "-m", "pip", "install", TORCH]
    if os.environ.get("TORCH_INDEX_URL"):
        cmd += ["--index-url", os.environ["TORCH_INDEX_URL"]]
    say(f"installing {TORCH} (no torch in the venv)")
    check(cmd)


def stamp_of(extras: str) -> str:
    h = hashlib.sha256(extras.encode())
    for path in sorted([ROOT / "setup.py", ROOT / "pyproject.toml", *(ROOT / "csrc").glob("*")]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(os.environ.get("ESPER_FAST_CUDA", "auto").encode())
    return h.hexdigest()


def ensure_project(python: Path, extras: str) -> None:
    stamp_file = python.parent.parent / f".esper_fast-{extras.replace(',', '-')}.stamp"
    stamp = stamp_of(extras)
    if stamp_file.is_file() and stamp_file.read_text() == stamp and can_import(python, "esper_fast._C"):
        return
    log = python.parent.parent / "esper_fast-install.log"
    say(f"installing esper_fast[{extras}] (editable; compiles the C++ extension, a few minutes; full log: {log})")
    # pip -v passes setup.py's output through; show the build's own lines and pip's summary, log the rest.
    cmd = [str(python), "-m", "pip", "install", "-v", "--progress-bar", "off", "-e", f".[{extras}]"]
    say("$ " + " ".join(cmd))
    with (
        open(log, "w") as f,
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        for line in proc.stdout:
            f.write(line)
            text = line.strip()
            if "[esper_fast build]" in text or text.startswith(("Successfully installed", "ERROR", "error:")):
                print("  " + text, flush=True)
    if proc.returncode:
        say(f"pip failed (exit {proc.returncode}); the end of {log}:")
        print("".join(log.read_text().splitlines(keepends=True)[-40:]))
        sys.exit(proc.returncode)
    stamp_file.write_text(stamp)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(__doc__)
        return 2
    if sys.version_info < (3, 10):  # noqa: UP036 - this script runs under whatever python3 the machine has
        say(f"Python >= 3.10 needed, this is {sys.version.split()[0]}")
        return 2
    command, args = argv[0], argv[1:]
    python = ensure_venv()
    ensure_torch(python)
    ensure_project(python, EXTRAS[command])
    if command == "env":
        say(f"ready: {python}")
        return 0
    if command == "train":
        return run([str(python), "-m", "esper_fast", "train", *args], cwd=os.getcwd())
    rc = run([str(python), "-m", "pytest", "-q", *args], cwd=ROOT)
    if rc == 5:
        say("pytest exit code 5: no tests were collected (counted as success)")
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
