#!/usr/bin/python3
"""every SQL statement is parameterised: values travel as $n parameters,
never inside the statement's text.

two rules over the C sources of common/ and services/:

  1. formatting  a call of snprintf, vsnprintf, asprintf, vasprintf or
                 cm_arena_printf whose format looks like SQL (it starts
                 with a statement keyword, or holds FROM/WHERE/VALUES/
                 ON CONFLICT/SET LOCAL/$n) and has a conversion (%s, %d,
                 ...) builds a statement from values. allowed only where a
                 comment on its lines or the two above says why it is safe:
                     /* sql-safe: identifier quoted by PQescapeIdentifier */
                 the safe kinds: an identifier quoted with
                 PQescapeIdentifier, a number the code formats itself
                 (never text from a request), a compile-time constant,
                 another statement checked here.

  2. executing   the statement argument of PQexec, PQexecParams,
                 PQprepare, PQsendQuery*, PQsendPrepare and cm_db_exec,
                 cm_db_read, cm_db_read_row, cm_db_exec_auto,
                 cm_db_read_auto, cm_db_exec_prepared must be a run of
                 string literals and UPPER_CASE macros (a ternary of them
                 too), a static const of such, a local only ever assigned
                 those or the result of a formatting call (rule 1 checks
                 it), or a parameter of the enclosing function: that
                 function is then an executor too, and its callers are
                 checked the same way (found until nothing changes).
                 anything else (a pointer from elsewhere, text appended
                 with cm_buf_puts) is a failure unless marked sql-safe.
                 a cm_db_pipeline statement's text is checked where it is
                 set (.sql = ..., x->sql = ...), by the same rule, and a
                 cm_db_stmt initialised by position is a failure.

exit 0 when nothing is found; 1 otherwise, naming file, line and rule.

  scripts/check_sql_params.py [repo root]
  scripts/check_sql_params.py --expect FILE...   the checker's own test:
      the lines it flags in FILE must be exactly those carrying the
      comment "expect: unsafe" (exit 0), else it says which differ (1)
"""
import pathlib
import re
import sys

FORMATTERS = {"snprintf": 2, "vsnprintf": 2, "asprintf": 1, "vasprintf": 1, "cm_arena_printf": 1}
EXECUTORS = {
    "PQexec": 1, "PQexecParams": 1, "PQprepare": 2, "PQsendQuery": 1, "PQsendQueryParams": 1,
    "PQsendPrepare": 2, "cm_db_exec": 2, "cm_db_read": 2, "cm_db_read_row": 2,
    "cm_db_exec_auto": 2, "cm_db_read_auto": 2, "cm_db_exec_prepared": 3,
}
SQL_START = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|DROP|ALTER|SET|RESET|LISTEN|NOTIFY|UNLISTEN|"
    r"GRANT|REVOKE|TRUNCATE|COPY|BEGIN|COMMIT|ROLLBACK|LOCK|DO|COMMENT|ANALYZE|VACUUM|EXPLAIN|"
    r"PREPARE|EXECUTE|DECLARE|FETCH|CALL)\b")
SQL_INSIDE = re.compile(r"\b(FROM|WHERE|VALUES|ON CONFLICT|SET LOCAL|RETURNING)\b|\$[0-9%]")
CONVERSION = re.compile(r"%(?!%)[-+ #0-9.*]*(hh|h|ll|l|z|j|t|L)?[diouxXeEfgGcsp]")
MARKER = re.compile(r"sql-safe:\s*\S")
MACRO = re.compile(r"^[A-Z_][A-Z0-9_]*(\([^()]*\))?$")
IDENT = re.compile(r"^[A-Za-z_]\w*$")


def blank_comments(src):
    """src with comments turned into spaces (newlines kept) and the
    comments' text by line; string and char literals untouched"""
    out, comments = [], {}
    i, n, line = 0, len(src), 1
    while i < n:
        c = src[i]
        if src.startswith("/*", i) or src.startswith("//", i):
            end = src.find("*/", i + 2) + 2 if c == "/" and src[i + 1] == "*" else src.find("\n", i)
            if end < 2 or end == -1:
                end = n
            text = src[i:end]
            for k, part in enumerate(text.split("\n")):
                comments.setdefault(line + k, []).append(part)
            out.append("".join(ch if ch == "\n" else " " for ch in text))
            line += text.count("\n")
            i = end
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            out.append(src[i:j + 1])
            line += src[i:j + 1].count("\n")
            i = j + 1
        else:
            out.append(c)
            line += c == "\n"
            i += 1
    return "".join(out), comments


def split_args(code, i):
    """the arguments of the call whose '(' is just before i: (list of
    (text, offset), offset after ')')"""
    depth, args, start, j = 1, [], i, i
    while j < len(code) and depth:
        c = code[j]
        if c in "\"'":
            k = j + 1
            while k < len(code) and code[k] != c:
                k += 2 if code[k] == "\\" else 1
            j = k + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                args.append((code[start:j], start))
                break
        elif c == "," and depth == 1:
            args.append((code[start:j], start))
            start = j + 1
        j += 1
    return args, j + 1


def literal_run(expr):
    """the text of a run of string literals and macro names (macros as
    '\x00'), or None when expr is something else"""
    parts, s = [], expr.strip()
    while s:
        if s[0] == '"':
            k = 1
            while k < len(s) and s[k] != '"':
                k += 2 if s[k] == "\\" else 1
            parts.append(s[1:k])
            s = s[k + 1:].lstrip()
            continue
        m = re.match(r"[A-Z_][A-Z0-9_]*(\s*\((?:[^()]|\([^()]*\))*\))?", s)
        if not m or not m.group(0):
            return None
        parts.append("\x00")
        s = s[m.end():].lstrip()
    return "".join(parts) if parts else None


def outside_literals(e, start=0):
    """(offset, character, brackets open before it) of each character of e
    from start that is outside string and character literals"""
    depth, j = 0, start
    while j < len(e):
        c = e[j]
        if c in "\"'":
            k = j + 1
            while k < len(e) and e[k] != c:
                k += 2 if e[k] == "\\" else 1
            j = k + 1
            continue
        yield j, c, depth
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        j += 1


def top_level(e, ch, start=0):
    """the offset of the first ch outside literals and brackets, or -1"""
    for j, c, depth in outside_literals(e, start):
        if c not in "([{)]}" and c == ch and depth == 0:
            return j
    return -1


def constant(expr):
    """1 when expr is a literal run, or a ternary of them"""
    e = expr.strip()
    while e.startswith("(") and e.endswith(")") and top_level(e[1:-1], ")") == -1:
        e = e[1:-1].strip()
    if literal_run(e) is not None:
        return True
    q = top_level(e, "?")
    c = top_level(e, ":", q + 1) if q >= 0 else -1
    return c > 0 and constant(e[q + 1:c]) and constant(e[c + 1:])


def looks_like_sql(fmt):
    return bool(SQL_START.match(fmt) or SQL_INSIDE.search(fmt))


class File:
    def __init__(self, path, root):
        self.path = path
        self.name = str(path.relative_to(root)) if root else str(path)
        self.src = path.read_text(errors="replace")
        self.code, self.comments = blank_comments(self.src)
        self.functions = self.find_functions()

    def line(self, off):
        return self.code.count("\n", 0, off) + 1

    def marked(self, first, last):
        return any(MARKER.search(c) for ln in range(first - 2, last + 1)
                   for c in self.comments.get(ln, []))

    def find_functions(self):
        """(name, params, body start, body end) of every function definition"""
        out, depth, i, code = [], 0, 0, self.code
        while i < len(code):
            c = code[i]
            if c in "\"'":
                k = i + 1
                while k < len(code) and code[k] != c:
                    k += 2 if code[k] == "\\" else 1
                i = k + 1
                continue
            if c == "{":
                if depth == 0:
                    head = code[max(0, i - 2000):i].rstrip()
                    m = re.search(r"(\w+)\s*\(([^;{}]*)\)\s*$", head)
                    if m and m.group(1) not in ("if", "while", "for", "switch"):
                        out.append([m.group(1), [p.strip() for p in m.group(2).split(",")], i, None])
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0 and out and out[-1][3] is None:
                    out[-1][3] = i
            i += 1
        return [f for f in out if f[3] is not None]

    def enclosing(self, off):
        for f in self.functions:
            if f[2] < off < f[3]:
                return f
        return None


def param_index(params, name):
    for k, p in enumerate(params):
        m = re.search(r"(\w+)\s*(\[[^\]]*\])?$", p)
        if m and m.group(1) == name:
            return k
    return -1


def assignments(f, name, start, end):
    """the right-hand sides assigned to name between start and end"""
    body = f.code[start:end]
    rhs = []
    pat = re.compile(r"(?<![\w.>])" + re.escape(name) + r"\s*(\[[^\]]*\])?\s*=(?!=)")
    for m in pat.finditer(body):
        rhs.append(body[m.end():expression_end(body, m.end())].strip())
    return rhs


def expression_end(code, j):
    """where the expression starting at j ends: the first ',' ';' or
    unbalanced closing bracket outside literals and brackets"""
    for k, c, depth in outside_literals(code, j):
        if depth == 0 and (c in ";," or c in ")]}"):
            return k
    return len(code)


def format_ok(f, call, off):
    """1 when a formatting call (its text from the name on) is one rule 1
    judges: a format that looks like SQL (flagged there unless marked), or
    one without conversions. "%s%s" pasting fragments together is not"""
    m = re.match(r"(\w+)\s*\(", call)
    if not m or m.group(1) not in FORMATTERS:
        return False
    args, end = split_args(call, m.end())
    k = FORMATTERS[m.group(1)]
    fmt = literal_run(args[k][0]) if len(args) > k else None
    if fmt is None:
        return False
    if looks_like_sql(fmt.replace("\x00", " ")) or not CONVERSION.search(fmt):
        return True
    return f.marked(f.line(off), f.line(off + end))


def filled_by_format(f, name, start, end):
    """None when name is not the destination of a formatting call in the
    range; else 1 when every such call is one rule 1 judges"""
    pat = re.compile(r"\b(snprintf|vsnprintf)\s*\(\s*" + re.escape(name) + r"\s*,")
    calls = [m for m in pat.finditer(f.code, start, end)]
    if not calls:
        return None
    return all(format_ok(f, f.code[m.start():end], m.start()) for m in calls)


def statement_ok(f, expr, off):
    """(ok, why) for the statement argument expr at offset off"""
    e = expr.strip()
    if constant(e):
        return True, None
    fn = f.enclosing(off)
    if IDENT.match(e):
        if fn and param_index(fn[1], e) >= 0:
            return True, ("param", fn[0], param_index(fn[1], e))
        start, end = (fn[2], fn[3]) if fn else (0, len(f.code))
        rhs = assignments(f, e, start, end)
        formatted = filled_by_format(f, e, start, end)
        if not rhs and formatted is None:
            rhs = assignments(f, e, 0, len(f.code))  # a file-level constant
        if formatted is False:
            return False, None
        if (rhs or formatted) and all(
                constant(r) or r.startswith("malloc") or
                (r.startswith("cm_arena_printf") and format_ok(f, r, off)) for r in rhs):
            return True, None
    if e.startswith("cm_arena_printf") and format_ok(f, e, off):
        return True, None  # rule 1 looks at the call itself
    return False, None


def scan(files):
    """the findings: (file, line, message)"""
    found = []
    for f in files:
        for m in re.finditer(r"\b(" + "|".join(FORMATTERS) + r")\s*\(", f.code):
            args, end = split_args(f.code, m.end())
            k = FORMATTERS[m.group(1)]
            if len(args) <= k:
                continue
            fmt = literal_run(args[k][0])
            if fmt is None or not looks_like_sql(fmt.replace("\x00", " ")):
                continue
            if not CONVERSION.search(fmt):
                continue
            first, last = f.line(m.start()), f.line(end)
            if not f.marked(first, last):
                found.append((f, first, "SQL text built with %s conversions: pass the values as "
                              "$n parameters (or say why it is safe: /* sql-safe: ... */)"
                              % m.group(1)))
    sql_setters = {}
    for f in files:
        # a pipeline's statement (cm_db_stmt.sql): a fixed text where it
        # is set, since cm_db_pipeline sends whatever it is given
        # a cm_db_stmt initialised by position hides its text from the
        # rule below: its fields must be named
        for m in re.finditer(r"\bcm_db_stmt\b[^;=]*=\s*[{(]\s*\{?\s*\"|\(cm_db_stmt\)\s*\{\s*\"",
                             f.code):
            found.append((f, f.line(m.start()), "a cm_db_stmt initialised by position: name "
                          "its fields (.what, .sql, ...) so its text is checked"))
        for m in re.finditer(r"(?:\.|->)\s*sql\s*=(?!=)", f.code):
            j = expression_end(f.code, m.end())
            ok, wrap = statement_ok(f, f.code[m.end():j], m.end())
            first, last = f.line(m.start()), f.line(j)
            if wrap:
                # a parameter of the enclosing function: its callers are
                # checked as an executor's
                sql_setters[wrap[1]] = wrap[2]
            elif not ok and not f.marked(first, last):
                found.append((f, first, "a pipeline statement (.sql) is not a fixed text: %s"
                              % " ".join(f.code[m.end():j].split())[:60]))
    executors = dict(EXECUTORS)
    executors.update(sql_setters)
    while True:
        wrappers, bad = {}, []
        for f in files:
            for m in re.finditer(r"\b(" + "|".join(map(re.escape, executors)) + r")\s*\(", f.code):
                if f.enclosing(m.start()) is None:
                    continue  # a declaration or definition, not a call
                args, end = split_args(f.code, m.end())
                k = executors[m.group(1)]
                if len(args) <= k:
                    continue
                ok, wrap = statement_ok(f, args[k][0], args[k][1])
                if wrap:
                    wrappers[wrap[1]] = wrap[2]
                if not ok:
                    first, last = f.line(m.start()), f.line(end)
                    if not f.marked(first, last):
                        bad.append((f, first, "the statement given to %s is not a fixed text: %s"
                                    % (m.group(1), " ".join(args[k][0].split())[:60])))
        new = {w: i for w, i in wrappers.items() if w not in executors}
        if not new:
            return found + bad
        executors.update(new)


def c_files(root):
    for d in ("common", "services"):
        yield from sorted((root / d).rglob("*.c"))


def main(argv):
    if argv[1:2] == ["--expect"]:
        status = 0
        for p in argv[2:]:
            f = File(pathlib.Path(p), None)
            got = {ln for _, ln, _ in scan([f])}
            want = {i + 1 for i, text in enumerate(f.src.split("\n")) if "/* expect: unsafe */" in text}
            if got != want:
                print("check_sql_params: %s: flagged %s, expected %s"
                      % (p, sorted(got), sorted(want)))
                status = 1
        if status == 0:
            print("check_sql_params: the planted cases are found, the safe ones pass")
        return status
    root = pathlib.Path(argv[1] if len(argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    files = [File(p, root) for p in c_files(root)]
    found = scan(files)
    for f, ln, msg in sorted(found, key=lambda x: (x[0].name, x[1])):
        print("%s:%d: %s" % (f.name, ln, msg))
    if found:
        print("check: SQL not parameterised above (scripts/check_sql_params.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
