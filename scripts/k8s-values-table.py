#!/usr/bin/env python3
"""The values table of k8s/README.md, written from k8s/commerce/values.yaml:
one row per leaf key (path, default, the comment above it or above its
closest commented parent map). Between the markers
    <!-- values:commerce -->  ...  <!-- /values:commerce -->
the table is rewritten (no argument) or compared (--check: exit 1 and a
diff when it differs; scripts/k8s-check.sh runs that).

values.yaml is plain block YAML (maps, scalars, inline {} and [], block
lists): a line-based reader is enough and needs no PyYAML.
"""
import difflib
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUES = os.path.join(ROOT, "k8s", "commerce", "values.yaml")
README = os.path.join(ROOT, "k8s", "README.md")
BEGIN, END = "<!-- values:commerce -->", "<!-- /values:commerce -->"
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.\-/]+):(?:\s+(.*))?$")


def rows():
    out = []
    stack = []  # (indent, key, comment)
    comment = []
    lines = open(VALUES).read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        s = line.strip()
        if not s:
            comment = []
            continue
        if s.startswith("#"):
            comment.append(s.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if not m:  # a list item under a key already reported
            continue
        indent, key, value = len(m.group(1)), m.group(2), (m.group(3) or "").strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        own = " ".join(comment)
        comment = []
        if value == "":
            # a map or a block list: a block list is one leaf
            j = i
            while j < len(lines) and (not lines[j].strip() or lines[j].strip().startswith("#")):
                j += 1
            if j < len(lines) and lines[j].strip().startswith("- "):
                items = []
                while j < len(lines) and (lines[j].strip() == "" or len(lines[j]) - len(lines[j].lstrip()) > indent):
                    items.append(lines[j].strip())
                    j += 1
                i = j
                items = [x for x in items if x and not x.startswith("#")]
                if all(x.startswith("- ") and not KEY.match(x[2:]) for x in items):
                    value = "[" + ", ".join(x[2:] for x in items) + "]"
                else:
                    value = f"({len([x for x in items if x.startswith('- ')])} item list: see values.yaml)"
            else:
                stack.append((indent, key, own))
                continue
        path = ".".join([k for _, k, _ in stack] + [key])
        desc = own or next((c for _, _, c in reversed(stack) if c), "")
        out.append((path, value, desc))
    return out


def table():
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for path, value, desc in rows():
        v = value.replace("|", "\\|")
        lines.append(f"| `{path}` | `{v}` | {desc.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main():
    check = len(sys.argv) > 1 and sys.argv[1] == "--check"
    text = open(README).read()
    if BEGIN not in text or END not in text:
        sys.exit(f"k8s-values-table: {README} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + BEGIN + "\n" + table() + END + tail
    if check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), README, "generated"))
            sys.exit("k8s-values-table: k8s/README.md's values table differs from values.yaml (run scripts/k8s-values-table.py)")
        print("k8s-values-table: k8s/README.md matches values.yaml")
    else:
        open(README, "w").write(new)
        print("k8s-values-table: k8s/README.md rewritten")


if __name__ == "__main__":
    main()
