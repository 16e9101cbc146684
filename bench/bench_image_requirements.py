"""What each image's Python requirements weigh installed: the dispatcher's set beside the worker's.

    .venv/bin/python bench/bench_image_requirements.py [--no-write]

No Docker engine is needed (or used): for each image, a fresh virtualenv of this Python gets
`builder/image_requirements.py --image <image>` installed with its constraints file, wheels
only, as its Dockerfile does; pip and setuptools are then removed (the dispatcher image does
that; for the worker it keeps the comparison fair) and the folder is measured. What the
base images add (python:3.11-slim, the CUDA image) is not measured here.
Writes the "Image requirements" section of docs/benchmarks.md unless --no-write.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


def measure(image: str, work: Path) -> dict:
    venv = work / image
    subprocess.run([BASE_PYTHON, "-m", "venv", str(venv)], check=True)
    requirements = work / f"{image}-requirements.txt"
    requirements.write_text(subprocess.run(
        [sys.executable, str(ROOT / "builder" / "image_requirements.py"), "--image", image, str(ROOT / "pyproject.toml")],
        check=True, capture_output=True, text=True).stdout)
    python = venv / "bin" / "python"
    env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    started = time.monotonic()
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--only-binary=:all:", "-r", str(requirements),
                    "-c", str(ROOT / "builder" / f"{image}-constraints.txt")], check=True, env=env)
    install_s = time.monotonic() - started
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "--yes", "pip", "setuptools"], check=True, env=env)
    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    count = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(len(list(m.distributions())))"],
                           check=True, capture_output=True, text=True, cwd=work).stdout.strip()
    return {"image": image, "mib": size / 2**20, "packages": int(count), "install_s": install_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(image, Path(tmp)) for image in ("dispatcher", "worker")]
    code = sum(f.stat().st_size for f in (ROOT / "supabase_sync").rglob("*")
               if f.is_file() and "__pycache__" not in f.parts) / 2**20
    for result in results:
        print(f"{result['image']}: {result['mib']:.1f} MiB, {result['packages']} packages "
              f"(installed in {result['install_s']:.0f} s)")
    print(f"supabase_sync's own files: {code:.2f} MiB")
    if args.no_write:
        return 0
    from bench.report import write_section

    rows = "\n".join(f"| {r['image']} | {r['packages']} | **{r['mib']:.1f} MiB** |" for r in results)
    write_section("Image requirements", f"""
Command: `.venv/bin/python bench/bench_image_requirements.py`. Python {platform.python_version()} on {platform.machine()};
run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Each image's requirement set installed as its
Dockerfile does (`builder/image_requirements.py --image <image>`, its constraints file, wheels only)
into a fresh virtualenv, pip and setuptools removed, the folder's files summed. No Docker engine
here: what the base image adds (python:3.11-slim-bookworm for the dispatcher) is not measured.

| image | packages | installed size |
| --- | --- | --- |
{rows}

The dispatcher image carries its virtualenv and `supabase_sync/` ({code:.2f} MiB) on the slim
Python base; none of the worker's runpod SDK, boto3 or websocket-client, and the worker's image
gets no psycopg.
""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
