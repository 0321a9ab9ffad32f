#!/usr/bin/env python3
"""Summarize an fstests run from its xunit report.

usage: summarize.py RESULTS_DIR [EXPECTED_TEST...]

Writes RESULTS_DIR/summary.tsv (test, status: pass/fail/notrun, seconds,
reason) and prints the counts. Each EXPECTED_TEST that has no result (check
died, or the test was never reached) is listed as fail "no result".
Exit 2 when there is no report at all.
"""
import glob, os, sys
import xml.etree.ElementTree as ET


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
        print("no result.xml found")
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
