#!/usr/bin/env python3
"""The README's one table of settings, built from docs/env-common.md and the settings
table of each docs/<service>.md, so the two never disagree.
Usage: env-table.py --check (exit 1 when README.md is stale) | --write"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["ingress", "authz", "dispatcher", "auditor", "backup-agent"]
BEGIN, END = "<!-- env-table:begin -->", "<!-- env-table:end -->"
VAR = re.compile(r"`(GW_[A-Z0-9_]+)`")


def cells(line):
    # Split a markdown row on unescaped pipes.
    parts = re.split(r"(?<!\\)\|", line.strip())
    return [c.strip() for c in parts[1:-1]]


def rows(text):
    return [l for l in text.splitlines() if l.startswith("| ") and VAR.search(cells(l)[0] if cells(l) else "")]


def build():
    common = (ROOT / "docs/env-common.md").read_text().splitlines()
    table = [l for l in common if l.startswith("|")]
    seen = set()
    for l in table:
        seen.update(VAR.findall(cells(l)[0]) if cells(l) else [])
    for svc in SERVICES:
        text = (ROOT / "docs" / f"{svc}.md").read_text()
        for l in rows(text):
            c = cells(l)
            if len(c) != 3:
                sys.exit(f"env-table: docs/{svc}.md: expected 3 cells (variable, default, meaning): {l}")
            names = VAR.findall(c[0])
            if all(n in seen for n in names):
                continue
            seen.update(names)
            table.append(f"| {c[0]} | {svc} | {c[1]} | {c[2]} |")
    return "\n".join(table)


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in ("--check", "--write"):
        sys.exit(__doc__)
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"env-table: README.md lacks the {BEGIN} / {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{build()}\n{END}{tail}"
    if sys.argv[1] == "--write":
        readme.write_text(new)
    elif new != text:
        sys.exit("env-table: README.md's settings table is stale: "
                 "python3 tests/tools/env-table.py --write")


if __name__ == "__main__":
    main()
