#!/usr/bin/env python3
"""The two Quickstart commands, runnable on a fresh clone with nothing but python3.

    python3 dev.py quickstart   # create .venv, train the tiny config on synthetic data, evaluate it
    python3 dev.py test         # create .venv (dev, tpu, speech, asr, beam extras), run ruff and all tests

The virtual environment is (re)built only when pyproject.toml changes (a hash stamp in .venv).
Extra arguments after the command are passed through (to pytest for ``test``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
# The suite tests every extra it can install from PyPI (the spoken voice also needs Debian's espeak-ng, which
# .ci/run installs). The quickstart needs none of them.
TEST_EXTRAS = "dev,tpu,speech,asr,beam"


def ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this file runs on whatever python3 the user has)
        sys.exit(f"interaction_jax needs Python >= 3.11, this is {sys.version.split()[0]}")
    # One stamp per (pyproject.toml, extras): the test and quickstart commands do not reinstall each other's.
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = VENV / f".stamp-{digest}-{extras.replace(',', '_')}"
    if stamp.exists():
        return
    if not PY.exists():
        print(f"[dev] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"[dev] installing interaction_jax[{extras}] into {VENV} (first run takes a few minutes)", flush=True)
    # pip's own chatter (index warnings, build-backend notices) goes to a log, shown only if the install fails.
    log = VENV / "install.log"
    with open(log, "w") as f:
        for cmd in (["install", "--upgrade", "pip"], ["install", "-e", f".[{extras}]"]):
            rc = subprocess.call([str(PY), "-m", "pip", *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
            if rc:
                sys.stdout.write(log.read_text()[-6000:])
                sys.exit(f"[dev] pip {' '.join(cmd)} failed (exit {rc}); full log: {log}")
    print(f"[dev] installed (log: {log})", flush=True)
    for old in VENV.glob(".stamp-*"):
        if not old.name.startswith(f".stamp-{digest}-"):
            old.unlink()
    stamp.touch()


def run(args: list[str]) -> int:
    print("[dev] $ " + " ".join(args), flush=True)
    # CPU unless the user chose otherwise: libtpu (the [tpu] extra, for AOT checks) would otherwise probe for
    # a TPU and print warnings on every start.
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    return subprocess.call(args, cwd=ROOT, env=env)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("quickstart", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "test":
        ensure_venv(TEST_EXTRAS)
        rc = run([str(PY), "-m", "ruff", "check", "interaction_jax", "tests", "configs", "dev.py"])
        if rc:
            return rc
        rc = run([str(PY), "-m", "pytest", "-q", *rest])
        if rc == 5:
            print("[dev] pytest collected no tests: failing on purpose", flush=True)
            return 1
        return rc
    ensure_venv("dev,tpu")
    workdir = rest[0] if rest else "runs/quickstart"
    return run([str(PY), "-m", "interaction_jax", "quickstart", "--workdir", workdir])


if __name__ == "__main__":
    sys.exit(main())
