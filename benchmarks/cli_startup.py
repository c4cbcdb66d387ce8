"""How long `blagpt --help` and `blagpt list` take, with every installed plugin discoverable.

Prints the median wall time of N runs of each command in a fresh interpreter. Target for
`--help`: under 0.5 s (it imports only click; plugins load in the commands that need them).

    python benchmarks/cli_startup.py [--runs 5]
"""

import argparse
import statistics
import subprocess
import sys
import time


def timed(args: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "blagpt", *args], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    base = timed(["--version"], a.runs)
    print(f"python -m blagpt --version : {base:.3f} s (median of {a.runs})")
    print(f"python -m blagpt --help    : {timed(['--help'], a.runs):.3f} s")
    print(f"python -m blagpt list      : {timed(['list'], a.runs):.3f} s (imports every plugin; builds none)")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"bare python startup        : {time.perf_counter() - t0:.3f} s")


if __name__ == "__main__":
    main()
