#!/usr/bin/env python3
"""Summarize an Autobahn|Testsuite report folder (its index.json).

usage: summarize.py REPORT_DIR [--agent NAME] [--strict] [--allow-unimplemented]
                    [--label TEXT]

Prints per-behavior counts, the failed cases (behavior / closing behavior / report
file), and as the last line `N passed, N failed` (or `TEXT: N passed, N failed`
with --label). Exit status 1 if any case failed or no cases were found.

Default: a case passes when its behavior is OK, NON-STRICT or INFORMATIONAL (or
UNIMPLEMENTED with --allow-unimplemented) and its closing behavior is not FAILED
or UNCLEAN. Passed cases that are not plain OK are listed.

--strict: a case passes only when its behavior is OK or INFORMATIONAL (no right
answer exists for those) and its closing behavior is OK or INFORMATIONAL. Every
other case (NON-STRICT, WRONG CODE, FAILED BY CLIENT, ...) is a failure and is
listed with its behaviors.

If REPORT_DIR/wstest.log names the cases wstest was asked to run ("Cases = [...]"),
cases missing from the report (e.g. a client that stopped early) count as failed.
"""
import argparse
import ast
import json
import os
import re
import sys

PASSING = ("OK", "NON-STRICT", "INFORMATIONAL")
STRICT_PASSING = ("OK", "INFORMATIONAL")
ORDER = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
BAD_CLOSE = ("FAILED", "UNCLEAN")
STRICT_CLOSE = ("OK", "INFORMATIONAL")


def case_key(case_id):
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def expected_cases(report_dir):
    """The case ids wstest announced in its log, or None."""
    try:
        with open(os.path.join(report_dir, "wstest.log"), errors="replace") as f:
            for line in f:
                m = re.match(r"\s*Cases = (\[.*\])\s*$", line)
                if m:
                    return [str(c) for c in ast.literal_eval(m.group(1))]
    except (OSError, ValueError, SyntaxError):
        pass
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir")
    ap.add_argument("--agent", help="only this agent (default: all in the report)")
    ap.add_argument("--strict", action="store_true",
                    help="only OK/INFORMATIONAL behavior and closing behavior pass")
    ap.add_argument("--allow-unimplemented", action="store_true",
                    help="count UNIMPLEMENTED cases as passed")
    ap.add_argument("--label", help="prefix of the last line: 'LABEL: N passed, N failed'")
    args = ap.parse_args()

    def result(passed, failed):
        line = "%d passed, %d failed" % (passed, failed)
        print("%s: %s" % (args.label, line) if args.label else line)

    index = os.path.join(args.report_dir, "index.json")
    try:
        with open(index) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        print("summarize.py: cannot read %s: %s\n  (in client mode the client must open"
              " /updateReports?agent=A at the end)" % (index, e), file=sys.stderr)
        result(0, 1)
        return 1
    if args.agent:
        if args.agent not in report:
            print("summarize.py: agent %r not in report %s (have: %s)"
                  % (args.agent, index, ", ".join(sorted(report)) or "none"), file=sys.stderr)
            result(0, 1)
            return 1
        report = {args.agent: report[args.agent]}

    expected = expected_cases(args.report_dir)
    passed = failed = 0
    for agent in sorted(report):
        cases = report[agent]
        counts = {}
        bad = []
        notes = {}  # passed, but not plain OK: NON-STRICT, INFORMATIONAL, odd close
        for cid in sorted(cases, key=case_key):
            c = cases[cid]
            beh, close = c.get("behavior", "?"), c.get("behaviorClose", "?")
            counts[beh] = counts.get(beh, 0) + 1
            if beh == "UNIMPLEMENTED":
                ok = args.allow_unimplemented
            elif args.strict:
                ok = beh in STRICT_PASSING and close in STRICT_CLOSE
            else:
                ok = beh in PASSING and close not in BAD_CLOSE
            if ok:
                passed += 1
                if beh not in ("OK", "UNIMPLEMENTED"):
                    notes.setdefault(beh, []).append(cid)
                if close not in ("OK", "INFORMATIONAL"):
                    notes.setdefault("close " + close, []).append(cid)
            else:
                failed += 1
                if beh != "UNIMPLEMENTED":
                    bad.append((cid, beh, close, c.get("reportfile", "")))
        missing = []
        if expected is not None:
            missing = sorted(set(expected) - set(cases), key=case_key)
            failed += len(missing)
        print("agent %s: %d cases%s" % (agent, len(cases), " (strict)" if args.strict else ""))
        for beh in list(ORDER) + sorted(set(counts) - set(ORDER)):
            print("  %-14s %d" % (beh, counts.get(beh, 0)))
        for what in sorted(notes):
            ids = notes[what]
            more = " ... (%d more)" % (len(ids) - 20) if len(ids) > 20 else ""
            print("  passed with %s: %s%s" % (what, " ".join(ids[:20]), more))
        if bad:
            print("  %s cases (behavior / closing behavior / report):"
                  % ("non-OK" if args.strict else "failed"))
            for cid, beh, close, rfile in bad:
                path = os.path.join(args.report_dir, rfile) if rfile else ""
                html = os.path.splitext(path)[0] + ".html"
                if path and os.path.exists(html):
                    path = html
                print("    %-10s %-14s / %-16s %s" % (cid, beh, close, path))
        if missing:
            more = " ... (%d more)" % (len(missing) - 40) if len(missing) > 40 else ""
            print("  %d cases missing from the report (not run; counted as failed): %s%s"
                  % (len(missing), " ".join(missing[:40]), more))
        if counts.get("UNIMPLEMENTED") and not args.allow_unimplemented:
            print("  (%d UNIMPLEMENTED cases counted as failed; pass --allow-unimplemented"
                  " or exclude them, e.g. 12.*,13.* without permessage-deflate)"
                  % counts["UNIMPLEMENTED"])
        if bad or missing:
            print("  report: %s" % os.path.join(os.path.abspath(args.report_dir), "index.html"))
    if passed + failed == 0:
        print("summarize.py: no cases in %s" % index, file=sys.stderr)
        failed = 1
    result(passed, failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
