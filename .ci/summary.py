"""Summarise a pytest JUnit XML report for CI: counts, failures, slowest tests; fail on an empty run.

Usage: python .ci/summary.py REPORT.xml PYTEST_EXIT_CODE. Exits non-zero when pytest failed, when the report
is missing, or when no test ran (pytest's exit code 5, or every test skipped).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    report, code = Path(sys.argv[1]), int(sys.argv[2])
    if not report.is_file():
        print(f"CI: FAILED - pytest wrote no report ({report}); pytest exit code {code}")
        return code or 1
    root = ET.parse(report).getroot()
    cases = list(root.iter("testcase"))
    failed, errors, skipped = [], [], []
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            failed.append(name)
        elif case.find("error") is not None:
            errors.append(name)
        elif case.find("skipped") is not None:
            skipped.append((name, case.find("skipped").get("message", "")))
    passed = len(cases) - len(failed) - len(errors) - len(skipped)
    seconds = sum(float(s.get("time", 0) or 0) for s in root.iter("testsuite"))
    print("=" * 72)
    print(f"CI summary: {passed} passed, {len(failed)} failed, {len(errors)} errors, {len(skipped)} skipped "
          f"of {len(cases)} tests in {seconds / 60:.1f} min (pytest exit code {code})")
    for name in failed:
        print(f"  FAILED {name}")
    for name in errors:
        print(f"  ERROR  {name}")
    reasons: dict[str, int] = {}
    for _, message in skipped:
        reasons[message] = reasons.get(message, 0) + 1
    for message, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count}: {message}")
    slow = sorted(cases, key=lambda c: -float(c.get("time", 0) or 0))[:5]
    if slow:
        print("  slowest: " + ", ".join(f"{c.get('name')} {float(c.get('time', 0)):.0f}s" for c in slow))
    if code == 5 or passed == 0:
        print("CI: FAILED - no test ran (pytest exit code 5 or every test skipped)")
        return 1
    if code != 0 or failed or errors:
        print("CI: FAILED")
        return code or 1
    print("CI: PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
