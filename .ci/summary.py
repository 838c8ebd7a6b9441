"""Summarise a pytest JUnit XML report for CI: counts, failures, slowest tests; fail on an empty run.

Usage: python .ci/summary.py REPORT.xml PYTEST_EXIT_CODE [STAGE]. Exits non-zero when pytest failed, when the
report is missing, or when no test ran (pytest's exit code 5, or every test skipped). STAGE names the run in
each line (.ci/run runs the tests under several CPU code-generation targets).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main() -> int:
    report, code = Path(sys.argv[1]), int(sys.argv[2])
    stage = f" (stage {sys.argv[3]})" if len(sys.argv) > 3 else ""
    if not report.is_file():
        print(f"CI: FAILED{stage} - pytest wrote no report ({report}); pytest exit code {code}")
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
    print(f"CI summary{stage}: {passed} passed, {len(failed)} failed, {len(errors)} errors, {len(skipped)} skipped "
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
        print(f"CI: FAILED{stage} - no test ran (pytest exit code 5 or every test skipped)")
        return 1
    if code != 0 or failed or errors:
        print(f"CI: FAILED{stage}")
        return code or 1
    print(f"CI: PASSED{stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
