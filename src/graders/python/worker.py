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
_grade = None


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
            return None
    return "source must define a top-level function grade(sample, item)"


def handle(req):
    global _grade
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
        if "source" in req:
            _grade = None
            namespace = {"__name__": "grader"}
            exec(compile(req["source"], "grader.py", "exec"), namespace)
            fn = namespace.get("grade")
            if not callable(fn):
                raise TypeError("source does not define a callable grade(sample, item)")
            _grade = fn
        if _grade is None:
            raise RuntimeError("no grader source loaded")
        return {"ok": True, "reward": to_reward(_grade(req["sample"], req["item"]))}
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
