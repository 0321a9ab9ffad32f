#!/usr/bin/env python3
"""Markdown tables from fstests runs of tests/fstests/run.sh.

usage: report.py NAME=RESULTS_DIR [NAME=RESULTS_DIR ...]

Reads each RESULTS_DIR/summary.tsv and prints a summary (pass / fail / notrun
per target) and one row per test with each target's result. A test a target
did not reach is shown as "-". The first target is the one compared: rows
where it fails or is notrun while another target passes are marked with **.
"""
import sys


def load(path):
    rows = {}
    with open(f"{path}/summary.tsv") as f:
        for line in f:
            name, status, secs, why = (line.rstrip("\n").split("\t") + ["", "", ""])[:4]
            rows[name] = (status, secs, why)
    return rows


def main():
    runs = []
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        runs.append((name, load(path)))
    tests = sorted({t for _, r in runs for t in r})
    print("| target | ran | pass | fail | notrun |")
    print("|---|---|---|---|---|")
    for name, r in runs:
        c = {k: sum(1 for v in r.values() if v[0] == k) for k in ("pass", "fail", "notrun")}
        print(f"| {name} | {len(r)} | {c['pass']} | {c['fail']} | {c['notrun']} |")
    print()
    print("| test | " + " | ".join(n for n, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    first = runs[0][1]
    for t in tests:
        cells = []
        for _, r in runs:
            s = r.get(t, ("-", "", ""))
            cells.append(s[0] + (f" {s[1]}s" if s[0] == "pass" and s[1] else ""))
        mine = first.get(t, ("-",))[0]
        mark = "**" if mine in ("fail", "notrun") and any(r.get(t, ("-",))[0] == "pass" for _, r in runs[1:]) else ""
        print(f"| {mark}{t}{mark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
