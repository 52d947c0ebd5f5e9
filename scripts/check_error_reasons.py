#!/usr/bin/python3
"""every ErrorInfo reason the services can send is in the catalogue.

the catalogue is proto/commerce/common/v1/error_reason.proto (the value
names without ERROR_REASON_). the code is common/ and services/ (the test
services under tests/ have reasons of their own and are not the public
API). a reason reaches the wire in one of these ways, and each is read here:

  cm_rpc_fail(ctx, code, REASON, message)   REASON: string literals in the
                                            argument (a ? "A" : "B" gives
                                            both); a bare identifier: the
                                            literals assigned to it in the
                                            same file (cm_rpc_fail_err's
                                            switch, cm_rpc_fail_forward)
  violate(v, REASON, ...)                   order's domain: the reason a
                                            violation carries, sent by
                                            api.c's fail_v as v->reason
  static const char *const *_reasons[] = {  tables of reasons, e.g. the
      ... }                                 runtime's default per code

a reason argument in any other form (a call, a field of something else) is
a failure too: this script cannot tell what it sends, so teach it the new
form, or pass a literal. cm_rpc_fail_field always sends INVALID_ARGUMENT;
cm_rpc_fail_forward passes a dependency's reason on, which is one of these
services' reasons, or DEPENDENCY_FAILED.

exit 0 when every reason found is catalogued; 1 otherwise, naming file,
line and reason. catalogued reasons no code sends are listed as a note
(the commission service is not built yet).

  scripts/check_error_reasons.py [repo root]
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
CATALOGUE = ROOT / "proto/commerce/common/v1/error_reason.proto"
SCAN = [ROOT / "common", ROOT / "services"]
REASON_RE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")
LITERAL_RE = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def catalogue():
    names = set()
    text = CATALOGUE.read_text(encoding="utf-8")
    for m in re.finditer(r"^\s*ERROR_REASON_([A-Z0-9_]+)\s*=\s*\d+\s*;", text, re.M):
        if m.group(1) != "UNSPECIFIED":
            names.add(m.group(1))
    return names


def strip_comments(src):
    """comments blanked (newlines kept, so offsets give line numbers);
    string and character literals left as they are"""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            i = j + 1
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def call_args(src, open_paren):
    """the top-level arguments of the call whose '(' is at open_paren"""
    args, depth, start, i = [], 0, open_paren + 1, open_paren
    while i < len(src):
        c = src[i]
        if c in "\"'":
            j = i + 1
            while j < len(src) and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            i = j
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                args.append(src[start:i])
                return args
        elif c == "," and depth == 1:
            args.append(src[start:i])
            start = i + 1
        i += 1
    return args


def literals(expr):
    return [m.group(1) for m in LITERAL_RE.finditer(expr)]


def line_of(src, pos):
    return src.count("\n", 0, pos) + 1


def main():
    known = catalogue()
    if not known:
        print(f"check_error_reasons: no ERROR_REASON_ values found in {CATALOGUE}")
        return 1
    sent = {}  # reason -> first "file:line"
    problems = []

    def found(reason, where):
        if not REASON_RE.match(reason):
            problems.append(f"{where}: reason \"{reason}\" is not UPPER_SNAKE")
            return
        sent.setdefault(reason, where)
        if reason not in known:
            problems.append(f"{where}: reason {reason} is not in {CATALOGUE.relative_to(ROOT)}")

    files = sorted(p for d in SCAN for p in d.rglob("*") if p.suffix in (".c", ".h"))
    for path in files:
        src = strip_comments(path.read_text(encoding="utf-8"))
        rel = path.relative_to(ROOT)
        for m in re.finditer(r"\b(cm_rpc_fail|violate)\s*\(", src):
            fn = m.group(1)
            args = call_args(src, m.end() - 1)
            where = f"{rel}:{line_of(src, m.start())}"
            idx = 2 if fn == "cm_rpc_fail" else 1
            if len(args) <= idx:
                continue
            expr = args[idx].strip()
            if re.match(r"(const\s+)?char\s*\*", expr):
                continue  # the declaration or definition itself
            lits = literals(expr)
            if lits:
                for r in lits:
                    found(r, where)
            elif expr == "NULL":
                if fn == "cm_rpc_fail":
                    problems.append(f"{where}: cm_rpc_fail without a reason: name one")
                # violate(v, NULL, ...): a plain INVALID_ARGUMENT
            elif fn == "cm_rpc_fail" and re.fullmatch(r"[A-Za-z_]\w*", expr):
                # a variable: every literal assigned to it in this file
                assigned = 0
                for a in re.finditer(r"\b%s\s*=(?!=)([^;]*);" % re.escape(expr), src):
                    for r in literals(a.group(1)):
                        found(r, f"{rel}:{line_of(src, a.start())}")
                        assigned += 1
                if not assigned:
                    problems.append(f"{where}: cannot tell which reasons variable {expr} holds")
            elif fn == "cm_rpc_fail" and re.fullmatch(r"cm_rpc_strdup\(\s*\w+\s*,\s*v->reason\s*\)", expr):
                pass  # fail_v: the violate() calls of the same service, read above
            else:
                problems.append(f"{where}: cannot tell which reason {fn}() sends: {expr}; "
                                "pass a string literal or teach scripts/check_error_reasons.py")
        for m in re.finditer(r"\b\w*_reasons\s*\[[^\]]*\]\s*=\s*\{", src):
            body = call_args(src, m.end() - 1)
            for part in body:
                for r in literals(part):
                    found(r, f"{rel}:{line_of(src, m.start())}")

    problems = list(dict.fromkeys(problems))  # a variable's assignments are read per call
    for p in problems:
        print(f"check_error_reasons: {p}")
    unsent = sorted(known - sent.keys())
    if unsent:
        print("check_error_reasons: note: catalogued, sent by no code yet: " + ", ".join(unsent))
    if problems:
        print(f"check_error_reasons: {len(problems)} problem(s); every reason sent must be an "
              f"ERROR_REASON_ value of {CATALOGUE.relative_to(ROOT)}")
        return 1
    print(f"check_error_reasons: ok ({len(sent)} reasons sent, all catalogued)")
    return 0


sys.exit(main())
