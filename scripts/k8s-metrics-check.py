#!/usr/bin/env python3
"""Every metric the alerts (k8s/commerce/files/prometheus-rules.yaml) and
the dashboards (k8s/commerce/files/dashboards/*.json) use must exist.

  scripts/k8s-metrics-check.py                  names registered in the source
                                                (cm_metrics_counter/gauge/histogram
                                                calls in common/ and services/)
  scripts/k8s-metrics-check.py FILE|URL ...     and names exposed by a /metrics
                                                scrape (a file or http URL); with
                                                several, their union

Metric names are taken from the PromQL of each expression: identifiers that
are not functions, keywords, label names or durations. Names the rule file
records itself (`record:`) are not looked for: their expressions are.
"""
import glob
import json
import os
import re
import sys
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def exprs():
    out = []
    rules = os.path.join(ROOT, "k8s", "commerce", "files", "prometheus-rules.yaml")
    # the rule file is YAML; expressions are `expr:` scalars or `|` blocks
    lines = open(rules).read().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        if m.group(2).strip() in ("|", ">", "|-", ">-"):
            block, ind = [], len(m.group(1))
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= ind:
                    break
                block.append(nxt)
            out.append(("prometheus-rules.yaml", "\n".join(block)))
        else:
            out.append(("prometheus-rules.yaml", m.group(2)))
    for f in sorted(glob.glob(os.path.join(ROOT, "k8s", "commerce", "files", "dashboards", "*.json"))):
        d = json.load(open(f))
        for p in d.get("panels", []):
            for t in p.get("targets", []):
                out.append((os.path.basename(f), t["expr"]))
        for v in d.get("templating", {}).get("list", []):
            q = v.get("query")
            if isinstance(q, dict) and v.get("type") == "query":
                out.append((os.path.basename(f), q.get("query", "")))
    return out


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)                     # ranges
    e = re.sub(r"\$\{?\w+\}?", " ", e)                     # grafana variables
    names = set()
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{[^}]*\}", e):
        names.add(m.group(1))
    e = re.sub(r"\{[^}]*\}", " ", e)
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        if m.group(2) or m.group(1).lower() in KEYWORDS:
            continue
        names.add(m.group(1))
    # label_values(metric, label): the second argument is a label
    for m in re.finditer(r"label_values\(\s*[A-Za-z_:][A-Za-z0-9_:]*\s*,\s*(\w+)\s*\)", expr):
        names.discard(m.group(1))
    return names


def base(name):
    for s in HIST_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def recorded_names():
    """names the rule file records itself (`record:`): they exist wherever
    the rules run, and their own expressions are checked like any other"""
    rules = os.path.join(ROOT, "k8s", "commerce", "files", "prometheus-rules.yaml")
    return set(re.findall(r"^\s*-?\s*record:\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*$",
                          open(rules).read(), re.M))


def source_names():
    names = set()
    call = re.compile(r"cm_metrics_(?:counter|gauge|histogram)\s*\([^,]+,\s*\"([a-z_:][a-z0-9_:]*)\"", re.S)
    for f in glob.glob(os.path.join(ROOT, "common", "src", "*.c")) + glob.glob(os.path.join(ROOT, "services", "*", "*.c")):
        names.update(call.findall(open(f).read()))
    return names


def scraped_names(srcs):
    names = set()
    for s in srcs:
        text = urllib.request.urlopen(s, timeout=5).read().decode() if s.startswith("http") else open(s).read()
        for line in text.splitlines():
            if line.startswith("# TYPE ") or line.startswith("# HELP "):
                names.add(line.split()[2])
            elif line and not line.startswith("#"):
                names.add(base(re.split(r"[{\s]", line, 1)[0]))
    return names


def main():
    used = {}
    for where, e in exprs():
        for n in metric_names(e):
            used.setdefault(n, set()).add(where)
    if not used:
        sys.exit("k8s-metrics-check: no expressions found")
    recorded = recorded_names()
    for n in recorded:
        used.pop(n, None)
    checks = [("the source", source_names())]
    if len(sys.argv) > 1:
        checks.append(("the scrape", scraped_names(sys.argv[1:])))
    fail = False
    for what, have in checks:
        missing = sorted(n for n in used if base(n) not in have and n not in have)
        for n in missing:
            print(f"k8s-metrics-check: {n} (used by {', '.join(sorted(used[n]))}) is not in {what}")
        fail = fail or bool(missing)
    if fail:
        sys.exit(1)
    print(f"k8s-metrics-check: the {len(used)} metrics of the alerts and dashboards exist in "
          + " and ".join(w for w, _ in checks) + ": " + " ".join(sorted(used)))


if __name__ == "__main__":
    main()
