#!/usr/bin/env python3
"""Summarize an fstests run from its xunit report.

usage: summarize.py RESULTS_DIR [EXPECTED_TEST...]

Writes RESULTS_DIR/summary.tsv (test, status: pass/fail/notrun, seconds,
reason) and prints the counts. Each EXPECTED_TEST that has no result (check
died, or the test was never reached) is listed as fail "no result".
Exit 2 when there is no report at all.
"""
import glob, os, re, sys
import xml.etree.ElementTree as ET


LINE = re.compile(r"^([a-z0-9]+/[0-9]+)\s+(.*)$")


def from_console(path):
    """Results from check's console output: one line per finished test."""
    rows = {}
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return rows
    for line in lines:
        m = LINE.match(line)
        if not m:
            continue
        name, rest = m.group(1), m.group(2).strip()
        if rest.startswith("[not run]"):
            rows[name] = ("notrun", "", rest[9:].strip())
        elif re.fullmatch(r"\d+s( \.\.\.\s+\d+s)?", rest) or re.fullmatch(r"(\d+s \.\.\. )?\d+s", rest):
            rows[name] = ("pass", rest.split()[-1].rstrip("s"), "")
        elif rest:
            rows[name] = ("fail", "", rest)
    return rows


def main():
    results, expected = sys.argv[1], sys.argv[2:]
    reports = glob.glob(os.path.join(results, "results", "**", "result.xml"), recursive=True)
    rows = {}
    for rep in reports:
        try:
            root = ET.parse(rep).getroot()
        except ET.ParseError as e:
            print(f"unreadable report {rep}: {e}")
            continue
        for tc in root.iter("testcase"):
            name = tc.get("classname", "").replace("xfstests.", "") or ""
            name = tc.get("name") if "/" in (tc.get("name") or "") else name
            secs = tc.get("time", "")
            status, why = "pass", ""
            sk, fa, er = tc.find("skipped"), tc.find("failure"), tc.find("error")
            if sk is not None:
                status, why = "notrun", sk.get("message", "")
            elif fa is not None or er is not None:
                el = fa if fa is not None else er
                status, why = "fail", el.get("message", "")
            rows[name] = (status, secs, " ".join(why.split())[:200])
    if not reports:
        # check did not finish (killed): read its console output instead
        rows = from_console(os.path.join(results, "check.out"))
        print(f"no result.xml found; {len(rows)} results read from check.out")
    for t in expected:
        rows.setdefault(t, ("fail", "", "no result"))
    with open(os.path.join(results, "summary.tsv"), "w") as f:
        for name in sorted(rows):
            s, secs, why = rows[name]
            f.write(f"{name}\t{s}\t{secs}\t{why}\n")
    counts = {k: sum(1 for r in rows.values() if r[0] == k) for k in ("pass", "fail", "notrun")}
    print(f"ran {len(rows)}: pass {counts['pass']}, fail {counts['fail']}, notrun {counts['notrun']}")
    for name in sorted(rows):
        if rows[name][0] == "fail":
            print(f"  FAIL {name}: {rows[name][2]}")
    return 0 if reports else 2


if __name__ == "__main__":
    sys.exit(main())
