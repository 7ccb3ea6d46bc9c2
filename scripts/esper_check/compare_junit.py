"""Summarise esper's test runs: counts per JUnit XML, and every test whose outcome differs.

python compare_junit.py baseline.xml patched.xml
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def outcomes(path: str) -> dict[str, tuple[str, str]]:
    """test id -> (outcome, first line of the failure/skip message)."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        state, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                state = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                why = (
                    (node.get("message") or node.text or "").strip().splitlines()[0][:200]
                    if (node.get("message") or node.text)
                    else ""
                )
                break
        out[tid] = (state, why)
    return out


def counts(results: dict[str, tuple[str, str]]) -> str:
    tally: dict[str, int] = {}
    for state, _ in results.values():
        tally[state] = tally.get(state, 0) + 1
    return (
        ", ".join(f"{tally.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
        + f" ({len(results)} tests)"
    )


def main(argv: list[str]) -> int:
    runs = {path: outcomes(path) for path in argv}
    for path, results in runs.items():
        print(f"{path}: {counts(results)}")
        for tid, (state, why) in sorted(results.items()):
            if state in ("failed", "error"):
                print(f"    {state}: {tid}: {why}")
    if len(argv) == 2:
        base, new = runs[argv[0]], runs[argv[1]]
        changed = [
            (t, base.get(t, ("absent", ""))[0], new.get(t, ("absent", ""))[0])
            for t in sorted(set(base) | set(new))
            if base.get(t, ("absent",))[0] != new.get(t, ("absent",))[0]
        ]
        print(f"outcome changed for {len(changed)} tests:")
        for tid, before, after in changed:
            print(f"    {before} -> {after}: {tid}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
