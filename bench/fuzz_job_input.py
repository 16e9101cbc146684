"""The long version of tests/comfy/job/test_fuzz_job_input.py: fresh random examples, many of them.

    .venv/bin/python bench/fuzz_job_input.py                # 2000 examples of each property
    .venv/bin/python bench/fuzz_job_input.py --examples 10000

CI runs a fixed, bounded set (seconds); this explores. Same properties, same real handler
and CPU ComfyUI: any JSON value, and any mutation of a valid job, ends in a result whose
`error_type` is never `internal`, without a hang, leaving ComfyUI idle and its folders clean.
A failure prints the smallest example found and how to reproduce it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples of each property")
    args = parser.parse_args()
    env = dict(os.environ, FUZZ_EXAMPLES=str(args.examples))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "0",
               "tests/comfy/job/test_fuzz_job_input.py"]
    return subprocess.run(command, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
