#!/usr/bin/env python3
"""REST chat completions through the `openai` SDK against the gRPC Chat RPC,
on the same local model, in the same run, on one `lathe serve`.

SmolLM2-135M-Instruct (the Q4_1 GGUF that `lathe models pull` fetches) is
registered as `smollm2`; the doors are asked the same chat (one prompt,
greedy, the same number of new tokens), taking turns so that the machine's
drift hits them alike. The doors: REST whole (`chat.completions.create`),
REST streamed (`stream=True`, chunks iterated to the end) and gRPC (`Chat`
read to its end message).

- latency: one request at a time, N per door per round, the doors taking
  turns request by request; the median and p90 wall time of a request, the
  time to the first text (streams), the CPU time the server and this client
  spent on a request, and the median ratio of a request to the gRPC request
  of its turn.
- throughput: bursts of B requests at once (threads), each queued behind a
  chat that holds the engine so that it is decoded in one batch (see
  `throughput`), the doors taking turns burst by burst; completions/s and
  completion tokens/s, and the median ratio of a burst to the gRPC burst of
  its turn.

The answers are checked to be the same text through both doors. The ratios
are REST / gRPC within a round; each figure is the median over rounds.

    cargo build --release
    target/release/lathe models pull          # or put the GGUF at models/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 -m venv VENV && VENV/bin/pip install -r bench/chat_requirements.txt
    VENV/bin/python bench/chat_rest_vs_grpc.py [--rounds 4] [--latency-requests 12] [--burst 32]

Prints one table and writes OUT/result.json.
"""
import argparse
import concurrent.futures as cf
import importlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def grpc_stubs():
    """The lathe.v1 Python stubs, generated from proto/ into a temporary folder."""
    from grpc_tools import protoc
    import grpc_tools

    out = tempfile.mkdtemp(prefix="lathe-stubs-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    proto = os.path.join(ROOT, "proto")
    code = protoc.main(["protoc", f"-I{proto}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                        os.path.join(proto, "lathe", "v1", "models.proto")])
    if code != 0:
        sys.exit("protoc failed on proto/lathe/v1/models.proto")
    sys.path.insert(0, out)
    return importlib.import_module("lathe.v1.models_pb2"), importlib.import_module("lathe.v1.models_pb2_grpc")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Doors:
    def __init__(self, addr, key, model, max_tokens):
        import grpc
        from openai import OpenAI

        self.pb, pb_grpc = grpc_stubs()
        self.channel = grpc.insecure_channel(addr)
        self.grpc = pb_grpc.ModelServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {key}")]
        self.openai = OpenAI(base_url=f"http://{addr}/v1", api_key=key, max_retries=0, timeout=600)
        self.model, self.max_tokens = model, max_tokens

    def rest(self):
        t = time.perf_counter()
        r = self.openai.chat.completions.create(model=self.model, messages=[{"role": "user", "content": PROMPT}],
                                                temperature=0, max_completion_tokens=self.max_tokens)
        return time.perf_counter() - t, None, r.choices[0].message.content, r.usage.completion_tokens

    def rest_stream(self):
        t = time.perf_counter()
        first, text, tokens = None, [], 0
        stream = self.openai.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": PROMPT}], temperature=0,
            max_completion_tokens=self.max_tokens, stream=True, stream_options={"include_usage": True})
        for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            for c in chunk.choices:
                if c.delta.content:
                    if first is None:
                        first = time.perf_counter() - t
                    text.append(c.delta.content)
        return time.perf_counter() - t, first, "".join(text), tokens

    def hold(self):
        """A gRPC chat admitted to the engine (its call has answered), which
        holds it for its prefill; read it to its end."""
        pb = self.pb
        request = pb.ChatRequest(model=self.model, messages=[pb.ChatMessage(role="user", content="x " * 400)],
                                 sampling=pb.SamplingParams(temperature=0.0, max_tokens=1))
        call = self.grpc.Chat(request, metadata=self.metadata)
        call.initial_metadata()
        return call

    def grpc_chat(self):
        pb = self.pb
        request = pb.ChatRequest(model=self.model, messages=[pb.ChatMessage(role="user", content=PROMPT)],
                                 sampling=pb.SamplingParams(temperature=0.0, max_tokens=self.max_tokens))
        t = time.perf_counter()
        first, text, tokens = None, [], 0
        for msg in self.grpc.Chat(request, metadata=self.metadata):
            if msg.WhichOneof("payload") == "delta":
                if first is None:
                    first = time.perf_counter() - t
                text.append(msg.delta)
            else:
                tokens = msg.end.completion_tokens
        return time.perf_counter() - t, first, "".join(text), tokens


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (all its threads)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(calls, n, server_pid):
    """`n` requests per door, one at a time, the doors taking turns request
    by request (the order rotating), so that drift hits them alike; with the
    server's and this client's CPU seconds spent on each door's requests."""
    out = {name: [] for name, _ in calls}
    cpu = {name: [0.0, 0.0] for name, _ in calls}
    for i in range(n):
        for name, call in calls[i % len(calls):] + calls[:i % len(calls)]:
            server, client = cpu_seconds(server_pid), time.process_time()
            out[name].append(call())
            cpu[name][0] += cpu_seconds(server_pid) - server
            cpu[name][1] += time.process_time() - client
    result = {}
    for name, runs in out.items():
        walls = [r[0] for r in runs]
        firsts = [r[1] for r in runs if r[1] is not None]
        result[name] = {
            "server_cpu_s": cpu[name][0] / n,
            "client_cpu_s": cpu[name][1] / n,
            "walls_s": walls,
            "median_s": statistics.median(walls),
            "p90_s": pct(walls, 90),
            "first_median_s": statistics.median(firsts) if firsts else None,
            "text": runs[0][2],
            "tokens": runs[0][3],
        }
    for name in out:
        # Each request against the gRPC request of the same turn.
        result[name]["ratio_to_grpc"] = statistics.median(
            w / g for w, g in zip(result[name]["walls_s"], result["grpc"]["walls_s"]))
    return result


def throughput(doors, call, size):
    """`size` requests at once, queued behind a gRPC chat that holds the
    engine (a long prompt, one new token), so that they are decoded as one
    batch whatever order they arrive in: the engine batches what is queued
    when it starts a batch, so requests sent together would otherwise split
    into batches by microseconds of arrival. The time is from the burst's
    start to its last answer; the blocker is the same for both doors."""
    results, lock = [], threading.Lock()
    start = threading.Barrier(size + 1)

    def client():
        start.wait()
        r = call()
        with lock:
            results.append(r)

    blocker = doors.hold()
    with cf.ThreadPoolExecutor(size) as pool:
        futures = [pool.submit(client) for _ in range(size)]
        start.wait()
        t = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t
    for _ in blocker:
        pass
    return {
        "completions": len(results),
        "wall_s": wall,
        "completions_per_s": len(results) / wall,
        "tokens_per_s": sum(r[3] for r in results) / wall,
        "texts": sorted({r[2] for r in results}),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "chat"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--latency-requests", type=int, default=12, help="requests per door per round, one at a time")
    ap.add_argument("--burst", type=int, default=32, help="requests at once in a burst (one batch)")
    ap.add_argument("--bursts", type=int, default=2, help="bursts per door per round, the doors taking turns")
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    addr = f"127.0.0.1:{free_port()}"
    data_dir = tempfile.mkdtemp(prefix="lathe-chat-bench-")
    model_dir = os.path.dirname(os.path.abspath(a.model))
    server = subprocess.Popen([a.lathe, "serve", "--listen", addr, "--data-dir", data_dir, "--model-root", model_dir],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(a.out, "server.log"), "w"))
    env = dict(os.environ, LATHE_DATA_DIR=data_dir)
    try:
        for _ in range(200):
            if subprocess.run([a.lathe, "--addr", addr, "models", "list"], capture_output=True, env=env).returncode == 0:
                break
            time.sleep(0.2)
        else:
            sys.exit("the server did not come up")
        add = subprocess.run([a.lathe, "--addr", addr, "models", "add", a.model, "--name", "smollm2"],
                             capture_output=True, text=True, env=env)
        if add.returncode != 0:
            sys.exit(f"models add failed: {add.stderr}")
        key = open(os.path.join(data_dir, "admin.key")).read().strip()
        doors = Doors(addr, key, "smollm2", a.max_tokens)
        # Warm-up: the model loads on its first request; each door's
        # connections open.
        for call in (doors.grpc_chat, doors.rest, doors.rest_stream):
            throughput(doors, call, 4)

        load_before = os.getloadavg()
        rounds = []
        for r in range(a.rounds):
            # Alternate which door goes first in each round.
            order = [("grpc", doors.grpc_chat), ("rest", doors.rest), ("rest_stream", doors.rest_stream)]
            if r % 2:
                order.reverse()
            lat = latency(order, a.latency_requests, server.pid)
            thr = {name: [] for name, _ in order}
            for i in range(a.bursts):
                for name, call in order[i % len(order):] + order[:i % len(order)]:
                    thr[name].append(throughput(doors, call, a.burst))
            raw = dict(thr)
            for name, bursts in raw.items():
                thr[name] = {
                    "bursts": bursts,
                    "completions_per_s": statistics.median(b["completions_per_s"] for b in bursts),
                    "tokens_per_s": statistics.median(b["tokens_per_s"] for b in bursts),
                    "texts": sorted({t for b in bursts for t in b["texts"]}),
                    # Each burst against the gRPC burst of the same turn.
                    "ratio_to_grpc": statistics.median(
                        b["completions_per_s"] / g["completions_per_s"] for b, g in zip(bursts, raw["grpc"])),
                }
            texts = {lat[d]["text"] for d in lat} | {t for d in thr for t in thr[d]["texts"]}
            if len(texts) != 1:
                sys.exit(f"the doors answered differently: {texts}")
            rounds.append({"latency": lat, "throughput": thr})
            print(f"round {r + 1}: " + ", ".join(
                f"{d} {lat[d]['median_s'] * 1000:.1f} ms, {thr[d]['completions_per_s']:.2f}/s" for d in lat)
                + f"; ratios {lat['rest']['ratio_to_grpc']:.3f} {thr['rest']['ratio_to_grpc']:.3f}",
                flush=True)

        def med(f):
            return statistics.median(f(x) for x in rounds)

        summary = {"tokens": rounds[0]["latency"]["grpc"]["tokens"], "rounds": rounds,
                   "load_average": [load_before, os.getloadavg()]}
        for d in ("grpc", "rest", "rest_stream"):
            summary[d] = {
                "latency_median_ms": med(lambda x: x["latency"][d]["median_s"]) * 1000,
                "latency_p90_ms": med(lambda x: x["latency"][d]["p90_s"]) * 1000,
                "first_token_ms": (med(lambda x: x["latency"][d]["first_median_s"]) * 1000
                                   if d != "rest" else None),
                "completions_per_s": med(lambda x: x["throughput"][d]["completions_per_s"]),
                "tokens_per_s": med(lambda x: x["throughput"][d]["tokens_per_s"]),
                "server_cpu_ms": med(lambda x: x["latency"][d]["server_cpu_s"]) * 1000,
                "client_cpu_ms": med(lambda x: x["latency"][d]["client_cpu_s"]) * 1000,
            }
            if d != "grpc":
                summary[d]["latency_ratio"] = med(lambda x: x["latency"][d]["ratio_to_grpc"])
                summary[d]["throughput_ratio"] = med(lambda x: x["throughput"][d]["ratio_to_grpc"])
        json.dump(summary, open(os.path.join(a.out, "result.json"), "w"), indent=2)

        print(f"\n{summary['tokens']} new tokens a request, greedy; {a.rounds} rounds; "
              f"latency: {a.latency_requests} requests one at a time; "
              f"throughput: {a.bursts} bursts of {a.burst} requests at once; load average "
              f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
        print("| door | latency median | p90 | first token | server CPU | client CPU | completions/s | tokens/s "
              "| latency / gRPC | throughput / gRPC |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        names = {"grpc": "gRPC Chat", "rest": "REST (SDK)", "rest_stream": "REST (SDK, stream)"}
        for d in ("grpc", "rest", "rest_stream"):
            s = summary[d]
            first = f"{s['first_token_ms']:.1f} ms" if s["first_token_ms"] is not None else "–"
            lr = f"{s['latency_ratio']:.3f}" if d != "grpc" else "1"
            tr = f"{s['throughput_ratio']:.3f}" if d != "grpc" else "1"
            print(f"| {names[d]} | {s['latency_median_ms']:.1f} ms | {s['latency_p90_ms']:.1f} ms | {first} | "
                  f"{s['server_cpu_ms']:.0f} ms | {s['client_cpu_ms']:.1f} ms | "
                  f"{s['completions_per_s']:.2f} | {s['tokens_per_s']:.1f} | {lr} | {tr} |")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
