#!/usr/bin/env python3
"""Fail when modules of a Rust crate import each other in a cycle.

Graph, built per crate (each `src/` directory separately; paths into another
crate such as `lathe_engine::...` are ignored):

* Nodes: every .rs file under src/ is one module, named by its module path:
  src/lib.rs is `crate`, src/jobs/mod.rs is `jobs`, src/jobs/model.rs is
  `jobs::model`. Inline `mod x { .. }` blocks belong to their file's node.
  src/main.rs and src/bin/ are separate binary crates when src/lib.rs exists
  and are skipped (they reach the library only through its crate name).
* Test code is ignored: any item under `#[cfg(test)]` (inline test modules,
  helper fns, uses), a file whose declaration is `#[cfg(test)] mod x;` (with
  its children), and a file starting with `#![cfg(test)]`.
* Edges: A -> B when A's code names an item of B: `use` / `pub use` items
  (grouped trees expanded) and qualified paths anywhere in the code,
  starting with `crate::`, `$crate::` (macro_rules bodies count as code of
  their file), `self::`, `super::`, a child module declared in the file, or
  a name the file imported from this crate (`use crate::jobs;` then
  `jobs::model::X`). A path resolves to the deepest module FILE along it
  (`crate::jobs::model::JobRecord` -> `jobs::model`, `crate::jobs::Foo` ->
  `jobs`; in a `use`, a last segment naming a child module file means that
  child; outside `use` the last segment is an item, never a module, so
  `graders::dry_run(..)` is `graders` even beside a graders/dry_run.rs).
  `self`/`super` are relative to the enclosing module, inline ones included.
  `crate::m!` naming a `#[macro_export]` macro_rules resolves to the file
  defining it. `mod child;` is not an edge; self-edges are dropped.
* Comments, doc comments, string and char literals are blanked first.

Every strongly connected component with more than one node is a cycle: it is
printed with one concrete cycle and, per edge, the file:line creating it.
Exit status: 0 acyclic, 1 cycles found, 2 usage error.
"""
import argparse
import bisect
import io
import re
import sys
import tempfile
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IDENT = r"[A-Za-z_]\w*"
PATH_RE = re.compile(rf"(?<![\w$])(?<!::)(\$crate|{IDENT})(?:\s*::\s*{IDENT})+")
USE_RE = re.compile(r"(?<![\w$])use\s+([\w$:{},*\s]+?)\s*;")
MOD_DECL_RE = re.compile(rf"^(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+({IDENT})\s*;")
INLINE_MOD_RE = re.compile(rf"(?<![\w$])mod\s+({IDENT})\s*\{{")
RAW_STR_RE = re.compile(r'[bc]?r(#*)"')
MACRO_DEF_RE = re.compile(rf"(#\s*\[\s*macro_export\s*\]\s*)?macro_rules!\s*({IDENT})")


def shown(path):
    """A path relative to the repository when it lies inside it."""
    path = Path(path).resolve()
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def blank(text, start, end):
    """Replaces text[start:end] with spaces, keeping newlines (and offsets)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def strip_comments_and_strings(src):
    """Blanks comments, strings and char literals; offsets stay the same."""
    out, i, n = list(src), 0, len(src)
    def clear(a, b):
        for k in range(a, b):
            if out[k] != "\n":
                out[k] = " "
    while i < n:
        c, nxt = src[i], src[i + 1 : i + 2]
        if c == "/" and nxt == "/":
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                depth += {"/*": 1, "*/": -1}.get(src[j : j + 2], 0)
                j += 2 if src[j : j + 2] in ("/*", "*/") else 1
        elif c in "bcr" and (m := RAW_STR_RE.match(src, i)) and not re.match(r"[\w$]", src[i - 1 : i] or " "):
            j = src.find('"' + m.group(1), m.end())
            j = n if j < 0 else j + 1 + len(m.group(1))
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        elif c == "'" and (nxt == "\\" or src[i + 2 : i + 3] == "'"):
            j = src.find("'", i + 3 if nxt == "\\" else i + 2) + 1 or n
        else:
            i += 1
            continue
        clear(i, j)
        i = j
    return "".join(out)


def matching(text, i):
    """Index just past the bracket closing the one at text[i]."""
    pairs, depth = {"(": ")", "[": "]", "{": "}"}, 0
    for j in range(i, len(text)):
        if text[j] in pairs:
            depth += 1
        elif text[j] in ")]}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def is_test_cfg(attr):
    a = re.sub(r"\s", "", attr)
    if a == "cfg(test)":
        return True
    m = re.fullmatch(r"cfg\(all\((.*)\)\)", a)
    return bool(m) and "test" in re.split(r",(?![^()]*\))", m.group(1))


def blank_test_items(text):
    """Blanks every item under #[cfg(test)]. Returns (text, test child mods, whole file is test)."""
    test_mods, file_is_test, i = set(), False, 0
    while (i := text.find("#", i)) >= 0:
        m = re.compile(r"#\s*(!?)\s*\[").match(text, i)
        if not m:
            i += 1
            continue
        end = matching(text, m.end() - 1)
        if not is_test_cfg(text[m.end() : end - 1]):
            i = end
            continue
        if m.group(1):  # `#![cfg(test)]` at the top makes the whole file test code
            file_is_test = file_is_test or not text[:i].strip()
            i = end
            continue
        j = end  # skip further attributes, then the item up to `;` or its block
        while a := re.compile(r"\s*#\s*\[").match(text, j):
            j = matching(text, a.end() - 1)
        k, depth = j, 0
        while k < len(text):
            ch = text[k]
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
                if depth < 0 or (depth == 0 and ch == "}"):
                    k += depth == 0
                    break
            elif ch == ";" and depth == 0:
                k += 1
                break
            k += 1
        if d := MOD_DECL_RE.match(text[j:k].strip()):
            test_mods.add(d.group(1))
        text = blank(text, i, k)
        i = k
    return text, test_mods, file_is_test


def parse_use_tree(tree):
    """`crate::{a::X, b::{Y as Z, self}}` -> [(['crate','a','X'], None), ...]."""
    toks = re.findall(r"\$?\w+|::|[{},*]", tree)
    out, pos = [], 0
    def parse(prefix):
        nonlocal pos
        segs = []
        while pos < len(toks):
            t = toks[pos]
            if t == "::":
                pos += 1
            elif t == "{":
                pos += 1
                while pos < len(toks) and toks[pos] != "}":
                    parse(prefix + segs)
                    pos += toks[pos : pos + 1] == [","]
                pos += 1
                return
            elif t in (",", "}"):
                break
            elif t == "as":
                out.append((prefix + segs, toks[pos + 1]))
                pos += 2
                return
            else:
                segs.append(t)
                pos += 1
        full = prefix + segs
        if full[-1:] == ["self"] and len(full) > 1:
            full = full[:-1]
        out.append((full, None))
    parse([])
    return [(s, a) for s, a in out if s]


class Crate:
    def __init__(self, src_dir):
        self.src = src_dir
        toml = (src_dir.parent / "Cargo.toml").read_text() if (src_dir.parent / "Cargo.toml").exists() else ""
        m = re.search(r'^\s*name\s*=\s*"([^"]+)"', toml, re.M)
        self.name = m.group(1).replace("-", "_") if m else src_dir.parent.name
        self.files, self.skipped = {}, []  # module tuple -> Path
        has_lib = (src_dir / "lib.rs").exists()
        for f in sorted(src_dir.rglob("*.rs")):
            parts = f.relative_to(src_dir).with_suffix("").parts
            if has_lib and (parts == ("main",) or parts[0] == "bin"):
                self.skipped.append(f)
                continue
            self.files[parts[:-1] if parts[-1] in ("lib", "main", "mod") else parts] = f
        self.text, self.children, test_mods, self.macros = {}, {}, set(), {}
        for mod, f in self.files.items():
            raw = f.read_text(encoding="utf-8", errors="replace")
            text, tests, whole = blank_test_items(strip_comments_and_strings(raw))
            self.text[mod] = (raw, text)
            test_mods |= {mod + (t,) for t in tests} | ({mod} if whole else set())
            decls = (MOD_DECL_RE.match(ln.strip()) for ln in text.splitlines())
            self.children[mod] = {d.group(1) for d in decls if d}
            for m in MACRO_DEF_RE.finditer(text):
                if m.group(1):
                    self.macros[m.group(2)] = mod
        self.test_only = sorted(m for m in self.files if any(m[: len(t)] == t for t in test_mods))
        for m in self.test_only:
            del self.files[m]
        self.edges = {m: {} for m in self.files}  # src -> dst -> (file, line, evidence)
        for mod in self.files:
            self.scan(mod)

    def node_of(self, full):
        return next((full[:k] for k in range(len(full), -1, -1) if full[:k] in self.files), None)

    def absolute(self, segs, mod, inline, bindings):
        first, rest = segs[0], list(segs[1:])
        if first in ("crate", "$crate"):
            return tuple(rest)
        if first in ("self", "super"):
            cur, i = list(mod + inline), int(first == "self")
            while i < len(segs) and segs[i] == "super":
                if not cur:
                    return None
                cur.pop()
                i += 1
            return tuple(cur) + tuple(segs[i:])
        if first in bindings:
            return None if bindings[first] is None else bindings[first] + tuple(rest)
        if not inline and first in self.children[mod]:
            return mod + (first,) + tuple(rest)
        return None

    def scan(self, mod):
        raw, text = self.text[mod]
        lines = [0] + [m.end() for m in re.finditer("\n", text)]
        rel = shown(self.files[mod])
        spans = [(m.start(), matching(text, m.end() - 1), m.group(1)) for m in INLINE_MOD_RE.finditer(text)]
        inline_at = lambda o: tuple(name for s, e, name in spans if s < o < e)
        uses = [(m, parse_use_tree(m.group(1))) for m in USE_RE.finditer(text)]
        bindings = {}
        for _ in range(2):  # twice: a use may go through a name another use imported
            for m, paths in uses:
                for segs, alias in paths:
                    name = alias or segs[-1]
                    if segs[-1] != "*" and name not in ("_", "self", "crate", "super"):
                        bindings[name] = self.absolute(segs, mod, inline_at(m.start()), bindings)
        def add(full, offset, evidence):
            if full is None:
                return
            dst = self.node_of(tuple(s for s in full if s != "*"))
            lineno = bisect.bisect_right(lines, offset)
            if dst is not None and dst != mod and dst not in self.edges[mod]:
                self.edges[mod][dst] = (f"{rel}:{lineno}", evidence)
        in_use = set()
        for m, paths in uses:
            in_use.update(range(m.start(), m.end()))
            vis = re.search(r"(?<![\w$])pub(\([^)]*\))?\s*$", text[max(0, m.start() - 30) : m.start()])
            tree = re.sub(r"\s+", " ", m.group(1)).replace("{ ", "{").replace(" }", "}")
            stmt = (vis.group(0).replace(" ", "") + " " if vis else "") + "use " + tree
            for segs, _ in paths:
                ev = stmt if len(stmt) <= 120 else f"use {'::'.join(segs)}  [in a grouped use]"
                add(self.absolute(segs, mod, inline_at(m.start()), bindings), m.start(), ev)
        for m in PATH_RE.finditer(text):
            if m.start() in in_use:
                continue
            segs = re.split(r"\s*::\s*", m.group(0))
            full = self.absolute(segs, mod, inline_at(m.start()), bindings)
            if full and len(full) == 1 and full[0] in self.macros and re.match(r"\s*!", text[m.end() :]):
                full = self.macros[full[0]]
            elif full:  # an expression/type path ends in an item, never a module
                full = full[:-1]
            line = raw[lines[bisect.bisect_right(lines, m.start()) - 1] :].split("\n", 1)[0]
            col = m.start() - lines[bisect.bisect_right(lines, m.start()) - 1]
            ev = line.strip() if len(line.strip()) <= 120 else "..." + line[max(0, col - 40) : col + 80].strip() + "..."
            add(full, m.start(), ev)


def name(mod):
    return "::".join(mod) or "crate"


def sccs(graph):
    """Tarjan's algorithm, iterative. Returns components with more than one node."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def one_cycle(graph, comp):
    """Shortest cycle through the component's first node, by BFS inside it."""
    start, members = comp[0], set(comp)
    prev, queue = {}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if w in members and w not in prev:
                prev[w] = v
                if w == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(prev[path[-1]])
                    return path[::-1]
                queue.append(w)
    return [start]


def check(roots, dot=None, verbose=False, out=sys.stdout):
    """Prints the report; returns [(crate, its cyclic components), ...]."""
    found, dot_lines = [], ["digraph modules {", "  rankdir=LR; node [shape=box];"]
    for root in roots:
        crate = Crate(root)
        comps = sccs(crate.edges)
        found.append((crate, comps))
        n_edges = sum(len(d) for d in crate.edges.values())
        print(f"\ncrate {crate.name} ({shown(root)}): {len(crate.files)} modules, {n_edges} edges, "
              f"{len(comps)} cycle(s)", file=out)
        if verbose:
            for what, items in (("skipped (separate binary crate)", crate.skipped),
                                ("skipped (test-only module)", [name(m) for m in crate.test_only])):
                for it in items:
                    print(f"  {what}: {shown(it) if isinstance(it, Path) else it}", file=out)
            for src in sorted(crate.edges):
                for dst, (loc, ev) in sorted(crate.edges[src].items()):
                    print(f"  edge {name(src)} -> {name(dst)}  ({loc}: {ev})", file=out)
        in_cycle = set()
        for i, comp in enumerate(comps, 1):
            path = one_cycle(crate.edges, comp)
            print(f"\nCYCLE {i} in crate {crate.name}: {len(comp)} modules: "
                  f"{', '.join(name(m) for m in comp)}", file=out)
            print("  " + " -> ".join(name(m) for m in path), file=out)
            edges = list(zip(path, path[1:]))
            if verbose:
                edges = [(s, d) for s in comp for d in sorted(crate.edges[s]) if d in set(comp)]
                print("  all edges inside the component:", file=out)
            for s, d in edges:
                loc, ev = crate.edges[s][d]
                print(f"    {name(s)} -> {name(d)}  ({loc}: {ev})", file=out)
            in_cycle |= {(s, d) for s in comp for d in crate.edges[s] if d in set(comp)}
        dot_lines.append(f'  subgraph "cluster_{crate.name}" {{ label="{crate.name}";')
        dot_lines += [f'    "{crate.name}::{name(m)}" [label="{name(m)}"];' for m in sorted(crate.files)]
        dot_lines.append("  }")
        dot_lines += [f'  "{crate.name}::{name(s)}" -> "{crate.name}::{name(d)}"'
                      + (" [color=red];" if (s, d) in in_cycle else ";")
                      for s in sorted(crate.edges) for d in sorted(crate.edges[s])]
    if dot:
        Path(dot).write_text("\n".join(dot_lines + ["}"]) + "\n")
    return found


SELF_TEST = {
    "cyc/Cargo.toml": '[package]\nname = "cyc"\n',
    "cyc/src/lib.rs": "pub mod a;\npub mod b;\nmod c;\nmod d;\npub mod e;\n#[cfg(test)]\nmod suite;\n",
    "cyc/src/a.rs": "use crate::b::Thing;\npub struct Alpha;\npub fn f() -> crate::e::E { todo!() }\n"
                    "#[cfg(test)]\nuse crate::suite::S;\n",
    "cyc/src/b/mod.rs": "mod inner;\npub use inner::Thing;\n",
    "cyc/src/b/inner.rs": "pub struct Thing(pub super::super::a::Alpha);\n",
    "cyc/src/c.rs": "use super::{d::*};\npub fn helper() {}\ncrate::mk!();\n",  # macro defined in e
    "cyc/src/d.rs": "macro_rules! m { () => { $crate::c::helper() }; }\n",
    "cyc/src/e.rs": "/* crate::a::X /* nested */ crate::b */ pub struct E;\n/// see crate::a::Alpha\n"
                    "#[macro_export]\nmacro_rules! mk { () => {}; }\n"
                    "const Q: char = '\"'; const S: &str = \"crate::a::X\"; const R: &str = r#\"crate::b\"#;\n"
                    "#[cfg(test)]\nmod tests { use crate::a::*; }\n#[cfg(test)]\nfn t() { crate::b::x() }\n",
    "cyc/src/suite.rs": "pub struct S;\nuse crate::a::Alpha;\n",
    "acyc/src/lib.rs": "pub mod v;\npub mod w;\npub mod x;\npub mod y;\npub mod z;\npub use x::T;\n",
    "acyc/src/w/mod.rs": "mod helper;\npub fn helper() {}\n",  # fn named like a child module file
    "acyc/src/w/helper.rs": "use crate::z::W;\n",
    "acyc/src/v.rs": "use crate::x as ex;\npub fn f() -> ex::child::T { todo!() }\n",  # via an imported name
    "acyc/src/x/mod.rs": "pub mod child;\npub use self::child::T;\npub fn g() { crate::y::f(); }\n",
    "acyc/src/x/child.rs": "use crate::{y::{U, V}, z::W};\npub struct T;\n",
    "acyc/src/y.rs": "use super::z::*;\n// crate::x::T\nconst S: &str = \"super::x::T\";\npub fn f() {}\n",
    "acyc/src/z.rs": "pub struct W;\npub mod inner { pub fn k() { let _ = super::W; } }\n"
                     "pub fn k2() { crate::w::helper() }\n",
}


def self_test():
    with tempfile.TemporaryDirectory() as tmp:
        for rel, body in SELF_TEST.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(body)
        crates = [Path(tmp) / "cyc/src", Path(tmp) / "acyc/src"]
        result = check(crates, out=io.StringIO())
        found = {c.name: [[name(m) for m in comp] for comp in comps] for c, comps in result}
        edges = {c.name: sorted((name(s), name(d)) for s, ds in c.edges.items() for d in ds) for c, _ in result}
        expected = {"cyc": [["a", "b", "b::inner"], ["c", "d"]], "acyc": []}
        expected_edges = {
            "cyc": [("a", "b"), ("a", "e"), ("b", "b::inner"), ("b::inner", "a"), ("c", "d"), ("c", "e"), ("d", "c")],
            "acyc": [("crate", "x"), ("v", "x"), ("v", "x::child"), ("w::helper", "z"), ("x", "x::child"),
                     ("x", "y"), ("x::child", "y"),
                     ("x::child", "z"), ("y", "z"), ("z", "w")],
        }
    ok = found == expected and edges == expected_edges
    print("self-test " + ("passed" if ok else f"FAILED:\n  cycles {found}\n  edges {edges}"))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crate-root", action="append", metavar="DIR",
                    help="a crate's src directory (repeatable; default: src and crates/*/src)")
    ap.add_argument("--dot", metavar="FILE", help="write the module graph in Graphviz format")
    ap.add_argument("--verbose", action="store_true", help="print every edge and skipped file")
    ap.add_argument("--self-test", action="store_true", help="check the script on a fake crate")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    roots = [Path(r) for r in args.crate_root] if args.crate_root else \
        [r for r in [REPO / "src", *sorted(REPO.glob("crates/*/src"))] if r.is_dir()]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        ap.error(f"not a directory: {', '.join(missing)}")
    found = check(roots, dot=args.dot, verbose=args.verbose)
    total = sum(len(comps) for _, comps in found)
    print(f"\n{total} module cycle(s) found" if total else "\nno module cycles")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
