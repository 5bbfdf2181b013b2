# Lathe python-grader worker: one JSON request per line on stdin, one JSON reply per
# line on the original stdout. It runs inside the sandbox the Rust pool sets up (as pid 1
# of its PID namespace there).
#
# This process never runs user code: it compiles sources (parsing runs nothing), imports
# the packages they name (the environment's code, not the user's), and runs each grade in
# a forked child. The child closes this process's protocol descriptors before any user
# code runs, so a grader cannot write a reply to the pool; its only way out is a fresh
# pipe per grade, which this process reads until the child has exited and accepts only
# if it holds exactly one well-formed result. A grader can choose its reward (that is
# what it is for), never forge another call's, nor answer for a grade() that returned
# something else. After each grade every other process in the namespace is killed, so
# nothing a grade started outlives it.
#
# The next grade's child is forked right after a reply is sent (a "spare", waiting for
# its request on its own pipe), so the fork, its setup and the last child's teardown
# overlap the pool's round trip instead of adding to each call.
import ast
import builtins
import json
import math
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback

MAX_DETAILS = 16000
MAX_RESULT = MAX_DETAILS * 4 + 4096
IS_INIT = os.getpid() == 1
SCRATCH = os.environ.get("LATHE_SCRATCH", "/tmp")

proto_in = os.fdopen(os.dup(0), "rb")
proto_out = os.fdopen(os.dup(1), "wb")
_devnull = os.open(os.devnull, os.O_RDWR)
for _fd in (0, 1, 2):
    os.dup2(_devnull, _fd)
# On the standard descriptors (now /dev/null), which grades keep: they lose the rest.
sys.stdin = open(0, closefd=False)
sys.stdout = open(1, "w", closefd=False)
sys.stderr = open(2, "w", closefd=False)
# As pid 1 only signals with a handler reach this process from inside the namespace:
# drop python's SIGINT handler, so a grade cannot interrupt its worker.
signal.signal(signal.SIGINT, signal.SIG_IGN)
_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _grade_filter():
    """The pool's no-exec seccomp program (hex of struct sock_filter[]), prepared once;
    returns the call that installs it in a grading child."""
    data = bytes.fromhex(os.environ.get("LATHE_GRADE_FILTER", ""))
    if not data:
        return None
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(data, len(data))
    prog = SockFprog(len(data) // 8, ctypes.cast(buf, ctypes.c_void_p))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    ref = ctypes.byref(prog)
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2

    def install(keep=(buf, prog)):
        # no_new_privs is already set (the pool's filters needed it).
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ref, 0, 0) == 0

    return install


_FILTER = _grade_filter()
# Compiled sources by the pool's key for each; compiling runs none of the user's code.
_code = {}
# Top-level packages whose import runs more than definitions (a browser, a GUI, text).
_NO_PREIMPORT = {"antigravity", "this", "idlelib", "turtledemo", "tkinter"}


def send(obj):
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    obj["cpu"] = r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime
    proto_out.write(json.dumps(obj).encode() + b"\n")
    proto_out.flush()


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


def preimport(tree):
    """Imports, here, the packages a source names, so that each grade's fork finds them
    loaded instead of importing numpy per call. Package code from the environment, never
    the user's: private names (`__main__` modules run CLIs) and a few packages whose
    import does more than define are skipped; failures are the grade's to report."""
    import importlib
    import importlib.util
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += ["%s.%s" % (node.module, a.name) for a in node.names if a.name != "*"]
    for name in names:
        parts = name.split(".")
        if parts[0] in _NO_PREIMPORT or any(p.startswith("_") for p in parts) or name in sys.modules:
            continue
        try:
            # `from pkg import name` names a submodule or an attribute: import only the former.
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except BaseException:
            pass


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def read_request(fd):
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def run_grade(codes, r, w):
    """In the forked child: drop every descriptor but its two pipes, forbid exec, wait for
    the request, cap CPU, run the source and grade(), write one result line, exit."""
    low, high = sorted((r, w))
    os.closerange(3, low)
    os.closerange(low + 1, high)
    os.closerange(high + 1, _NOFILE)
    try:
        if _FILTER is not None and not _FILTER():
            raise OSError("cannot install the grading seccomp filter")
        os.environ["HOME"] = os.environ["TMPDIR"] = SCRATCH
        os.chdir(SCRATCH)
        tempfile.tempdir = SCRATCH
        line = read_request(r)
        if not line:
            os._exit(0)  # a spare the worker no longer needs
        req = json.loads(line)
        cpu_seconds = req.get("cpu_seconds")
        if cpu_seconds:
            soft = int(cpu_seconds)
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        namespace = {"__name__": "grader", "__builtins__": builtins}
        exec(codes[req["key"]], namespace)
        fn = namespace.get("grade")
        if not callable(fn):
            raise TypeError("source does not define a callable grade(sample, item)")
        reply = {"ok": True, "reward": to_reward(fn(req["sample"], req["item"]))}
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()[-MAX_DETAILS:]}
    if os.getpid() == GRADE_PID[0]:
        # A process the grade forked must never answer for it.
        try:
            write_all(w, (json.dumps(reply) + "\n").encode())
            # The worker's EOF, before this process's (slower) teardown.
            os.close(w)
        except BaseException:
            pass
    os._exit(0)


# The grading child's pid, set in it right after the fork.
GRADE_PID = [0]


def describe(status, cpu_seconds):
    if status is None:
        return "grader process did not finish"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "grader exceeded its CPU time limit (%ss)" % cpu_seconds
        if sig == signal.SIGKILL:
            return "grader process was killed (memory or process limit)"
        return "grader process died with signal %d" % sig
    return "grader process exited (status %d) without returning from grade()" % os.WEXITSTATUS(status)


def kill_everything(pid):
    """Kills every process the grade left: all of this namespace but pid 1 (outside a PID
    namespace, the grade's process group)."""
    try:
        if IS_INIT:
            os.kill(-1, signal.SIGKILL)
        else:
            os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def reap_everything():
    """Reaps every child, killing again each round, so a process forked while a kill went
    round is caught by the next."""
    while True:
        if IS_INIT:
            kill_everything(0)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


class Child:
    """A forked grading child waiting for its request: its pid, the write end of its
    request pipe, the read end of its result pipe, and the sources it knows."""

    def __init__(self):
        req_r, self.req_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.keys = frozenset(_code)
        self.pid = os.fork()
        if self.pid == 0:
            GRADE_PID[0] = os.getpid()
            if not IS_INIT:
                os.setpgid(0, 0)
            run_grade(_code, req_r, res_w)
        if not IS_INIT:
            try:
                # Also here, so a kill right after the fork finds the group.
                os.setpgid(self.pid, self.pid)
            except OSError:
                pass
        os.close(req_r)
        os.close(res_w)

    def discard(self):
        os.close(self.req_w)
        os.close(self.res_r)
        kill_everything(self.pid)
        reap_everything()


_spare = [None]


def after_reply():
    """Between calls: kills and reaps what the last grade left, forks the next child."""
    if _spare[0] is None and _code:
        reap_everything()
        _spare[0] = Child()


def grade(req, line):
    key = req.get("key")
    if "source" in req:
        _code.pop(key, None)
        source = req["source"]
        code = compile(source, "grader.py", "exec")
        preimport(ast.parse(source, "grader.py"))
        _code[key] = code
    if key not in _code:
        raise RuntimeError("no grader source loaded")
    child, _spare[0] = _spare[0], None
    if child is not None and key not in child.keys:
        child.discard()
        child = None
    if child is None:
        reap_everything()
        child = Child()
    wall = float(req.get("wall_seconds") or 120)
    try:
        try:
            write_all(child.req_w, line if line.endswith(b"\n") else line + b"\n")
        except BrokenPipeError:
            pass  # the child is gone; collect() says how
        finally:
            os.close(child.req_w)
        return collect(child.pid, child.res_r, wall, req.get("cpu_seconds"))
    finally:
        os.close(child.res_r)
        kill_everything(child.pid)


def collect(pid, r, wall, cpu_seconds):
    """The child's result: its pipe read to EOF (every writer gone: nothing more can come),
    or, when processes it forked still hold the pipe, what it held when the child exited;
    both within the wall-clock limit."""
    deadline = time.monotonic() + wall
    try:
        exited = os.pidfd_open(pid)
    except (AttributeError, OSError):
        exited = None  # polled below instead
    out = bytearray()
    status = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {"ok": False, "error": "grader timed out after %gs (wall-clock limit)" % wall}
            watch = [r] if exited is None else [r, exited]
            ready, _, _ = select.select(watch, [], [], left if exited is not None else min(left, 0.005))
            if r in ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                out += chunk
                if len(out) > MAX_RESULT:
                    return {"ok": False, "error": "grader wrote more than %d bytes to its result channel" % MAX_RESULT}
                continue
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                os.set_blocking(r, False)
                try:
                    out += os.read(r, MAX_RESULT + 1 - len(out))
                except BlockingIOError:
                    pass
                break
        if not out and status is None:
            # EOF without a result: the child is dying; its status says how.
            if exited is not None:
                select.select([exited], [], [], max(0.0, deadline - time.monotonic()))
            done, st = os.waitpid(pid, os.WNOHANG)
            status = st if done else None
    finally:
        if exited is not None:
            os.close(exited)
    if not out:
        return {"ok": False, "error": describe(status, cpu_seconds)}
    lines = bytes(out).split(b"\n")
    if len(lines) != 2 or lines[1]:
        return {"ok": False, "error": "protocol violation: the grader wrote to its result channel itself"}
    try:
        result = json.loads(lines[0])
        if result.get("ok") is True:
            return {"ok": True, "reward": to_reward(result["reward"])}
        return {"ok": False, "error": str(result["error"])[-MAX_DETAILS:]}
    except Exception:
        return {"ok": False, "error": "protocol violation: the grader's result is not one"}


def handle(req, line):
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
        return grade(req, line)
    return {"ok": False, "error": "unknown op %r" % (op,)}


for line in proto_in:
    try:
        req = json.loads(line)
    except Exception:
        send({"ok": False, "error": "malformed request"})
        continue
    try:
        reply = handle(req, line)
    except BaseException:
        reply = {"ok": False, "error": traceback.format_exc()[-MAX_DETAILS:]}
    send(reply)
    after_reply()
