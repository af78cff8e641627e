"""Find copied code in a Python tree: functions, and runs of statements, that are the same up to names.

    python tools/find_duplicates.py [PATH ...] [--min-statements 6] [--min-lines 8] [--json]

Each function body and each window of ``--min-statements`` consecutive statements (at any nesting level) is
reduced to a fingerprint of its syntax tree with docstrings dropped and every variable name, argument name
and constant replaced by a placeholder, so renamed copies match (attribute and keyword names are kept;
imports and bare string statements are left out of the windows). Groups of two or more places with the same
fingerprint that span at least ``--min-lines`` source lines are reported (overlapping windows of one copy
are merged into one finding). Exit status 1 when anything is found, so the script can guard CI.

It is a stand-in for the ``duplicates`` tool of the developers' guide where that tool is not installed.
"""

import argparse
import ast
import hashlib
import json
import os
import sys
from collections import defaultdict

__all__ = ["fingerprint", "find_duplicates", "main"]


class _Normalise(ast.NodeTransformer):
    """Replace variable and argument names and constants by placeholders; drop docstrings. Attribute and
    keyword names stay: they carry the meaning (two lists of different config keys are not a copy)."""

    def visit_Name(self, node):
        return ast.copy_location(ast.Name(id="_", ctx=node.ctx), node)

    def visit_arg(self, node):
        node.arg, node.annotation = "_", None
        return node

    def visit_Constant(self, node):
        return ast.copy_location(ast.Constant(value=type(node.value).__name__), node)

    def _strip_docstring(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        node.name = "_"
        node.returns = None
        node.decorator_list = []
        return self.generic_visit(node)

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip_docstring


def fingerprint(nodes):
    """Hash of the normalised dump of a list of statements (names and constants do not matter)."""
    module = ast.Module(body=[_Normalise().visit(_clone(n)) for n in nodes], type_ignores=[])
    return hashlib.sha1(ast.dump(module, annotate_fields=False).encode()).hexdigest()


def _clone(node):
    return ast.parse(ast.unparse(node)).body[0]


def _span(nodes):
    return nodes[0].lineno, max(getattr(n, "end_lineno", n.lineno) for n in nodes)


def _blocks(tree):
    """Every statement list in the tree (module, class, function, loop and branch bodies)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                yield [s for s in stmts if not _is_boilerplate(s)]


def _is_boilerplate(stmt):
    return isinstance(stmt, (ast.Import, ast.ImportFrom)) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))


def _python_files(paths):
    for path in paths:
        if os.path.isfile(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "output", "datasets"))
            yield from (os.path.join(root, f) for f in sorted(files) if f.endswith(".py"))


def find_duplicates(paths, min_statements=6, min_lines=8):
    """Return a list of findings ``{"lines": n, "places": ["file:start-end", ...]}``, longest first."""
    groups = defaultdict(list)  # fingerprint -> [(file, start, end)]
    for path in _python_files(paths):
        with open(path, encoding="utf-8") as f:
            try:
                tree = ast.parse(f.read(), filename=path)
            except SyntaxError as e:
                raise SyntaxError(f"{path}: cannot parse ({e})") from e
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start, end = _span([node])
                if end - start + 1 >= min_lines:
                    groups["def:" + fingerprint([node])].append((path, start, end))
        for stmts in _blocks(tree):
            for i in range(len(stmts) - min_statements + 1):
                window = stmts[i : i + min_statements]
                start, end = _span(window)
                if end - start + 1 >= min_lines:
                    groups["win:" + fingerprint(window)].append((path, start, end))
    findings = []
    for places in groups.values():
        unique = sorted(set(places))
        if len(unique) < 2:
            continue
        findings.append(unique)
    # merge overlapping windows: a finding is covered by another if each of its places lies inside one of the other's
    findings.sort(key=lambda pl: -max(e - s for _, s, e in pl))
    kept = []
    for places in findings:
        if any(all(any(f == g and gs <= s and e <= ge for g, gs, ge in other) for f, s, e in places) for other in kept):
            continue
        kept.append(places)
    return [{"lines": max(e - s + 1 for _, s, e in pl), "places": [f"{f}:{s}-{e}" for f, s, e in pl]} for pl in kept]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["simformer"])
    parser.add_argument("--min-statements", type=int, default=6)
    parser.add_argument("--min-lines", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for p in args.paths:
        if not os.path.exists(p):
            parser.error(f"no such file or folder: {p}")
    found = find_duplicates(args.paths, args.min_statements, args.min_lines)
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        for item in found:
            print(f"{item['lines']} lines, {len(item['places'])} places: " + "  ".join(item["places"]))
        print(f"{len(found)} copies found in {', '.join(args.paths)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
