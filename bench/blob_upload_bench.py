#!/usr/bin/env python3
"""Dataset upload throughput with the blobs on an S3 server (moto) against the local disk, in the
same run on the same machine.

    cargo build --release && pip install 'moto[server]'
    python3 bench/blob_upload_bench.py --mb 200

It generates a deterministic SFT file (scripts/gen_sft_bench.py), starts moto_server on a free port
and makes a bucket, then for each backend starts a fresh `lathe serve` (empty data dir; the default
local blob directory, or `--blob-url s3://lathe-bench/run` with the AWS_* settings that reach moto)
and times `lathe datasets upload` from start to the stored dataset. The backends alternate, each
runs --runs times (default 3) and keeps its best run. Prints a Markdown table and one JSON line.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "lathe-bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(moto_server):
    port = free_port()
    proc = subprocess.Popen([moto_server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    end = time.time() + 60
    while True:
        try:
            req = urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT")
            urllib.request.urlopen(req, timeout=2)
            return proc, endpoint
        except OSError:
            if time.time() > end:
                proc.kill()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)


def wait_serving(lathe, addr, env, deadline_s=30):
    end = time.time() + deadline_s
    while time.time() < end:
        probe = subprocess.run([lathe, "--addr", addr, "--json", "datasets", "list"], capture_output=True, env=env)
        if probe.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("server did not start")


def upload(lathe, path, workdir, blob_url, aws):
    """One upload to a fresh server: seconds."""
    data_dir = tempfile.mkdtemp(dir=workdir)
    env = dict(os.environ, LATHE_DATA_DIR=data_dir, **aws)
    addr = f"127.0.0.1:{free_port()}"
    args = [lathe, "serve", "--listen", addr, "--data-dir", data_dir, "--max-upload-bytes", str(4 << 30)]
    if blob_url:
        args += ["--blob-url", blob_url]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_serving(lathe, addr, env)
        t0 = time.perf_counter()
        out = subprocess.run([lathe, "--addr", addr, "--json", "datasets", "upload", path, "--purpose", "sft"],
                             capture_output=True, env=env)
        seconds = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(out.stderr.decode())
        # The next run uploads the same bytes: take this one's blob away.
        dataset = json.loads(out.stdout)
        subprocess.run([lathe, "--addr", addr, "datasets", "delete", dataset["id"]], check=True,
                       capture_output=True, env=env)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    return seconds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--moto-server", default=shutil.which("moto_server"))
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lathe-blob-bench"))
    args = ap.parse_args()
    if not os.path.exists(args.lathe):
        sys.exit("build first: cargo build --release")
    if not args.moto_server:
        sys.exit("pip install 'moto[server]' (or pass --moto-server)")
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"sft_{args.mb}mb.jsonl")
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gen_sft_bench.py"), "--mb", str(args.mb),
                        "--out", path], check=True)
    size = os.path.getsize(path)
    moto, endpoint = start_moto(args.moto_server)
    aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    try:
        runs = {"local": [], "s3": []}
        for _ in range(args.runs):
            runs["local"].append(upload(args.lathe, path, args.workdir, None, {}))
            runs["s3"].append(upload(args.lathe, path, args.workdir, f"s3://{BUCKET}/run", aws))
    finally:
        moto.terminate()
        moto.wait()
    best = {k: min(v) for k, v in runs.items()}
    mbps = {k: size / 1e6 / s for k, s in best.items()}
    print("| file MB | local disk s | local MB/s | S3 (moto) s | S3 MB/s | S3 / local |")
    print("|---|---|---|---|---|---|")
    print(f"| {size / 1e6:.1f} | {best['local']:.3f} | {mbps['local']:.1f} | {best['s3']:.3f} | "
          f"{mbps['s3']:.1f} | {mbps['s3'] / mbps['local']:.2f} |")
    print(json.dumps({"file_mb": round(size / 1e6, 1), "runs": {k: sorted(round(s, 3) for s in v)
                                                                for k, v in runs.items()},
                      "mb_per_s": {k: round(v, 1) for k, v in mbps.items()},
                      "s3_over_local": round(mbps["s3"] / mbps["local"], 3)}))


if __name__ == "__main__":
    main()
