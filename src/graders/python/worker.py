# Lathe python-grader worker: one JSON request per line on stdin, one JSON reply per
# line on the original stdout. It runs inside the sandbox the Rust pool sets up; this
# file only keeps user code from corrupting the protocol and reports failures in-band.
import ast
import json
import math
import os
import resource
import sys
import traceback

MAX_DETAILS = 16000
WORKER_PID = os.getpid()

proto_in = os.fdopen(os.dup(0), "rb")
proto_out = os.fdopen(os.dup(1), "wb")
_devnull = os.open(os.devnull, os.O_RDWR)
for _fd in (0, 1, 2):
    os.dup2(_devnull, _fd)
sys.stdin = open(os.devnull)
sys.stdout = open(os.devnull, "w")
sys.stderr = sys.stdout

_cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
# The grade functions of this worker's trust domain, by the pool's key for each source.
_grades = {}


def send(obj):
    obj["cpu"] = cpu_used()
    proto_out.write(json.dumps(obj).encode() + b"\n")
    proto_out.flush()


def cpu_used():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def to_reward(value):
    if isinstance(value, bool):
        raise TypeError("grade() returned a bool; return a float")
    if isinstance(value, (int, float)) or (
        type(value).__module__ == "numpy" and hasattr(value, "__float__")
    ):
        reward = float(value)
    else:
        raise TypeError("grade() must return a float, got %s" % type(value).__name__)
    if not math.isfinite(reward):
        raise ValueError("grade() returned %r" % reward)
    return reward


def limit_cpu(seconds):
    if not seconds:
        return
    soft = int(cpu_used()) + int(seconds) + 1
    if _cpu_hard != resource.RLIM_INFINITY:
        soft = min(soft, _cpu_hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, _cpu_hard))


def check(source):
    tree = ast.parse(source, "grader.py")
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade":
            if isinstance(node, ast.AsyncFunctionDef):
                return "grade must be a regular function, not async"
            args = node.args
            positional = len(args.posonlyargs) + len(args.args)
            if positional < 2 and args.vararg is None:
                return "grade must accept two arguments: grade(sample, item)"
            missing = missing_modules(tree)
            if missing:
                return "%s not installed in this server's python grader environment: %s" % (
                    "module is" if len(missing) == 1 else "modules are", ", ".join(missing))
            return None
    return "source must define a top-level function grade(sample, item)"


_IMPORT_GUARDS = ("ImportError", "ModuleNotFoundError", "Exception", "BaseException")


def _guards_imports(handler):
    t = handler.type
    names = t.elts if isinstance(t, ast.Tuple) else [t]
    return t is None or any(isinstance(n, ast.Name) and n.id in _IMPORT_GUARDS for n in names)


def missing_modules(tree):
    """Top-level packages the source imports that this interpreter cannot find
    (located, never imported); imports guarded by `except ImportError` are optional."""
    import importlib.util
    missing = []

    def visit(node):
        if isinstance(node, ast.Try) and any(_guards_imports(h) for h in node.handlers):
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top not in missing and importlib.util.find_spec(top) is None:
                missing.append(top)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return missing


def handle(req):
    op = req.get("op")
    if op == "ping":
        return {"ok": True}
    if op == "check":
        try:
            problem = check(req["source"])
        except SyntaxError as e:
            problem = "syntax error at line %s: %s" % (e.lineno, e.msg)
        return {"ok": problem is None, "error": problem}
    if op == "grade":
        limit_cpu(req.get("cpu_seconds"))
        key = req.get("key")
        if "source" in req:
            _grades.pop(key, None)
            namespace = {"__name__": "grader"}
            exec(compile(req["source"], "grader.py", "exec"), namespace)
            fn = namespace.get("grade")
            if not callable(fn):
                raise TypeError("source does not define a callable grade(sample, item)")
            _grades[key] = fn
        fn = _grades.get(key)
        if fn is None:
            raise RuntimeError("no grader source loaded")
        return {"ok": True, "reward": to_reward(fn(req["sample"], req["item"]))}
    return {"ok": False, "error": "unknown op %r" % (op,)}


for line in proto_in:
    try:
        req = json.loads(line)
    except Exception:
        send({"ok": False, "error": "malformed request"})
        continue
    try:
        reply = handle(req)
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()[-MAX_DETAILS:]}
    if os.getpid() != WORKER_PID:
        # A forked copy of the worker must never answer on the shared pipe.
        os._exit(0)
    send(reply)
