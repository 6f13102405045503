"""Draws `make bench`'s density curves (target/bench/density.csv) as a PNG beside it: start
latency and memory per pod against the number of pods running, one line per runtime."""

import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    start = defaultdict(list)
    pss = defaultdict(list)
    system = defaultdict(list)
    with open(src, newline="") as f:
        for row in csv.DictReader(f):
            rt, n = row["runtime"], int(row["pods"])
            start[rt].append((n, float(row["start_ms"])))
            if row["pss_mib_per_pod"]:
                pss[rt].append((n, float(row["pss_mib_per_pod"])))
                system[rt].append((n, float(row["system_mib_per_pod"])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colour = {rt: f"C{i}" for i, rt in enumerate(start)}
    for rt, points in start.items():
        ax1.plot(*zip(*points), ".", markersize=2, color=colour[rt], label=rt)
    ax1.set(xlabel="pods running", ylabel="RunPodSandbox + create + start (ms)",
            title="start latency of the next pod", yscale="log")
    for rt in pss:
        ax2.plot(*zip(*pss[rt]), "o-", color=colour[rt], label=f"{rt}: PSS")
        ax2.plot(*zip(*system[rt]), "x--", color=colour[rt], label=f"{rt}: system")
    ax2.set(xlabel="pods running", ylabel="MiB per pod", title="memory per pod")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"density plot: {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
