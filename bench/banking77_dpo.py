#!/usr/bin/env python3
"""Banking77 DPO on SmolLM2-135M-Instruct, end to end through Lathe's CLI
(the opt-in quality benchmark of DPO; about half an hour on 2 cores).

1. SFT: the 500 training rows of data/banking77 with the embedded trainer's
   "auto" settings (as examples/banking77.rs and the quickstart).
2. Mining, with Lathe itself: the SFT model answers N other Banking77
   *training* rows (never the 300 held-out test rows); every wrong answer
   makes a preference pair: preferred = the gold label, non-preferred = the
   model's own answer (`lathe datasets pairs RUN --reference-field /label`).
   The pairs go to OUT/pairs.jsonl; `--pairs FILE` uses
   a committed file instead of mining again
   (data/banking77/banking77_dpo_pairs.jsonl was made this way).
3. DPO from the SFT model (`--model ft:...`: OpenAI's recommended order;
   the reference is the SFT adapter, frozen), beta 0.1.
4. The same eval on the 300 held-out rows for the SFT model and for the
   SFT+DPO model, and `lathe evals compare` (exact McNemar on the items).

Writes OUT/result.json (accuracies, p-value, counts, times) and OUT/*.jsonl.

    cargo build --release
    python3 bench/banking77_dpo.py --out bench-out/dpo [--pairs data/banking77/banking77_dpo_pairs.jsonl]
"""
import argparse
import csv
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM = ("Classify the customer's banking query into exactly one intent label. "
          "Answer with the label only.")


def banking77_csv():
    for c in [os.path.join(ROOT, "..", "shared", "data", "banking77"), "/work/shared/data/banking77"]:
        if os.path.isfile(os.path.join(c, "train.csv")):
            return os.path.join(c, "train.csv")
    sys.exit("Banking77's train.csv not found (set it up as scripts/banking77_to_jsonl.py expects)")


class Lathe:
    def __init__(self, binary, addr):
        self.binary, self.addr = binary, addr

    def run(self, *args, json_out=True):
        cmd = [self.binary, "--addr", self.addr] + (["--json"] if json_out else []) + list(args)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p.stdout

    def one(self, *args):
        return json.loads(self.run(*args).strip().splitlines()[-1])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def sft_row(text, label):
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                         {"role": "assistant", "content": label}]}


def wait_job(lathe, job_id):
    while True:
        job = lathe.one("jobs", "get", job_id)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(5)


def wait_run(lathe, run_id):
    while True:
        run = lathe.one("evals", "get", run_id)
        if run["status"] in ("completed", "failed", "canceled"):
            return run
        time.sleep(3)


def vm_hwm_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def export_adapter(data_dir, job_id, step, out):
    """The PEFT files of a job's checkpoint, read from the embedded store
    (SQLite rows, content-addressed blobs), for the TRL peer."""
    import sqlite3
    db = sqlite3.connect(os.path.join(data_dir, "lathe.db"))
    rows = db.execute("SELECT f.name, f.sha256 FROM checkpoint_files f JOIN checkpoints c ON c.id = f.checkpoint_id "
                      "WHERE c.job_id = ? AND c.step = ?", (job_id, step)).fetchall()
    os.makedirs(out, exist_ok=True)
    for name, sha in rows:
        if name.startswith("adapter_"):
            src = os.path.join(data_dir, "blobs", "blobs", "sha256", sha[:2], sha)
            open(os.path.join(out, name), "wb").write(open(src, "rb").read())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "dpo"))
    ap.add_argument("--mine-rows", type=int, default=1200, help="training rows the SFT model answers")
    ap.add_argument("--pairs", help="a pairs file to use instead of mining")
    ap.add_argument("--beta", default="0.1")
    ap.add_argument("--rpo-alpha", default=None, help="weight of the NLL term on the preferred output (RPO)")
    ap.add_argument("--epochs", default="3")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--lr-multiplier", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trl-python", help="a Python with torch, peft and trl: run the TRL peer on the same pairs")
    ap.add_argument("--sft-job", help="reuse this finished SFT job (in OUT/data) instead of training again")
    ap.add_argument("--sft-only", action="store_true", help="stop after the SFT job (reuse it with --sft-job)")
    ap.add_argument("--mine-run", help="reuse this finished mining eval run (in OUT/data)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    data = os.path.join(ROOT, "data", "banking77")
    times = {}

    addr = f"127.0.0.1:{free_port()}"
    data_dir = os.path.join(a.out, "data")
    # The CLI finds the admin key a loopback server writes into its data dir.
    os.environ["LATHE_DATA_DIR"] = data_dir

    def serve():
        p = subprocess.Popen([a.lathe, "serve", "--listen", addr, "--data-dir", data_dir],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(a.out, "server.log"), "a"))
        for _ in range(200):
            if subprocess.run([a.lathe, "--addr", addr, "datasets", "list"], capture_output=True).returncode == 0:
                return p
            time.sleep(0.2)
        sys.exit("the server did not come up")

    server = serve()
    lathe = Lathe(a.lathe, addr)
    try:
        models = lathe.run("models", "list").strip().splitlines()
        if not any('"smollm2"' in m for m in models):
            lathe.run("models", "add", a.model, "--name", "smollm2")

        # 1. SFT on the 500 rows; 60 other training rows validate.
        train_csv = [(r["text"], r["category"]) for r in csv.DictReader(open(banking77_csv(), newline=""))]
        sft_texts = {json.loads(l)["messages"][1]["content"] for l in open(os.path.join(data, "banking77_train_sft.jsonl"))}
        rest = [r for r in train_csv if r[0] not in sft_texts]
        random.Random(7).shuffle(rest)
        valid_rows, mine_rows = rest[:60], rest[60:60 + a.mine_rows]
        write_jsonl(os.path.join(a.out, "sft_valid.jsonl"), [sft_row(t, l) for t, l in valid_rows])
        t = time.time()
        if a.sft_job:
            sft = lathe.one("jobs", "get", a.sft_job)
        else:
            train_ds = lathe.one("datasets", "upload", os.path.join(data, "banking77_train_sft.jsonl"),
                                 "--purpose", "sft")
            valid_ds = lathe.one("datasets", "upload", os.path.join(a.out, "sft_valid.jsonl"), "--purpose", "sft")
            sft = lathe.one("jobs", "create", "--model", "smollm2", "--training-file", train_ds["id"],
                            "--validation-file", valid_ds["id"], "--suffix", "b77-sft", "--seed", str(a.seed))
            sft = wait_job(lathe, sft["id"])
            times["sft_s"] = time.time() - t
        if sft["status"] != "succeeded":
            sys.exit(f"SFT failed: {sft}")
        sft_model = sft["fine_tuned_model"]
        if a.sft_only:
            print(json.dumps({"sft_job": sft["id"], "sft_model": sft_model, "times": times}), flush=True)
            return

        # The eval (exact label), used for mining and for the comparison.
        grader = os.path.join(a.out, "exact.json")
        json.dump({"type": "string_check", "name": "exact label", "input": "{{ sample.output_text }}",
                   "reference": "{{ item.label }}", "operation": "eq"}, open(grader, "w"))
        messages = os.path.join(a.out, "messages.json")
        json.dump([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{ item.text }}"}],
                  open(messages, "w"))
        ev = lathe.one("evals", "create", "--name", "banking77 intent", "--criterion", grader)
        if a.mine_run:
            ev = {"id": lathe.one("evals", "get", a.mine_run)["eval_id"]}

        def run_eval(dataset_id, model, name):
            run = lathe.one("evals", "run", ev["id"], "--dataset", dataset_id, "--model", model,
                            "--messages", messages, "--temperature", "0", "--max-tokens", "16", "--seed", "0",
                            "--concurrency", "64", "--name", name)
            return wait_run(lathe, run["id"])

        # 2. Pairs: the SFT model's own wrong answers on other training rows.
        if a.pairs:
            pairs_path = a.pairs
        else:
            items_path = os.path.join(a.out, "mine_items.jsonl")
            write_jsonl(items_path, [{"text": t, "label": l} for t, l in mine_rows])
            t = time.time()
            if a.mine_run:
                mined = lathe.one("evals", "get", a.mine_run)
            else:
                mine_ds = lathe.one("datasets", "upload", items_path, "--purpose", "eval")
                mined = run_eval(mine_ds["id"], sft_model, "mine pairs")
                times["mine_s"] = time.time() - t
            made = lathe.one("datasets", "pairs", mined["id"], "--reference-field", "/label",
                             "--filename", "pairs.jsonl")
            pairs_path = os.path.join(a.out, "pairs.jsonl")
            lathe.run("datasets", "download", made["dataset"]["id"], "-o", pairs_path, json_out=False)
            print(f"mined {made['counts']['kept']} pairs from {len(mine_rows)} training rows "
                  f"({mined['result_counts']['passed']} answered right)", flush=True)
        pairs_ds = lathe.one("datasets", "upload", pairs_path, "--purpose", "dpo")
        split = lathe.one("datasets", "split", pairs_ds["id"], "--validation-fraction", "0.1", "--seed", "0")
        dpo_train, dpo_valid = split["train"]["id"], split["validation"]["id"]

        # 3. DPO from the SFT model, on a fresh server process, so that its
        # peak memory is the DPO run's (plus an idle server's).
        server.terminate()
        server.wait()
        server = serve()
        args = ["jobs", "create", "--method", "dpo", "--model", sft_model, "--training-file", dpo_train,
                "--validation-file", dpo_valid, "--suffix", "b77-dpo", "--beta", a.beta, "--seed", str(a.seed),
                "--epochs", a.epochs, "--batch-size", a.batch_size]
        if a.lr_multiplier:
            args += ["--learning-rate-multiplier", a.lr_multiplier]
        if a.rpo_alpha:
            args += ["--rpo-alpha", a.rpo_alpha]
        t = time.time()
        dpo = wait_job(lathe, lathe.one(*args)["id"])
        times["dpo_s"] = time.time() - t
        if dpo["status"] != "succeeded":
            sys.exit(f"DPO failed: {dpo}")
        peak_mib = vm_hwm_mib(server.pid)
        lathe.run("jobs", "metrics", dpo["id"], "--svg", os.path.join(a.out, "dpo_loss.svg"), json_out=False)
        metrics = [json.loads(l) for l in lathe.run("jobs", "metrics", dpo["id"]).strip().splitlines()]
        write_jsonl(os.path.join(a.out, "dpo_metrics.jsonl"), metrics)
        events = lathe.run("jobs", "events", dpo["id"], "--limit", "1000", json_out=False)
        open(os.path.join(a.out, "dpo_events.txt"), "w").write(events)
        train_pairs_path = os.path.join(a.out, "dpo_train.jsonl")
        lathe.run("datasets", "download", dpo_train, "-o", train_pairs_path, json_out=False)
        train_pairs = sum(1 for l in open(train_pairs_path) if l.strip())

        # 4. Both models on the 300 held-out rows, compared.
        test_ds = lathe.one("datasets", "upload", os.path.join(data, "banking77_test_items.jsonl"), "--purpose", "eval")
        t = time.time()
        sft_run = run_eval(test_ds["id"], sft_model, "sft")
        dpo_run = run_eval(test_ds["id"], dpo["fine_tuned_model"], "sft+dpo")
        times["evals_s"] = time.time() - t
        cmp = json.loads(lathe.run("evals", "compare", sft_run["id"], dpo_run["id"],
                                   "--markdown", os.path.join(a.out, "comparison.md")).strip().splitlines()[-1])
        test = next(t for t in cmp["paired_tests"] if t["criterion"] != "all") if len(cmp["paired_tests"]) > 1 \
            else cmp["paired_tests"][0]
        pairs_n = sum(1 for _ in open(pairs_path))
        result = {
            "sft_model": sft_model, "dpo_model": dpo["fine_tuned_model"], "pairs": pairs_n,
            "dpo_train_pairs": train_pairs, "dpo_peak_rss_mib": peak_mib,
            "dpo_s_per_pair": times["dpo_s"] / (train_pairs * float(a.epochs)),
            "sft_correct": sft_run["result_counts"]["passed"], "dpo_correct": dpo_run["result_counts"]["passed"],
            "items": sft_run["result_counts"]["total"],
            "sft_only_right": test["baseline_only_passed"], "dpo_only_right": test["run_only_passed"],
            "p_value": test["p_value"], "significant": test["significant"],
            "times": times, "beta": a.beta, "rpo_alpha": float(a.rpo_alpha or 0),
            "lr_multiplier": float(a.lr_multiplier or 1), "epochs": float(a.epochs),
            "dpo_trained_tokens": dpo["trained_tokens"],
        }
        json.dump(result, open(os.path.join(a.out, "result.json"), "w"), indent=2)
        print(json.dumps(result, indent=2), flush=True)

        # 5. The TRL peer at equal settings, in the same run, from the same
        # SFT adapter and on the same training pairs.
        if a.trl_python:
            server.terminate()
            server.wait()
            adapter_dir = export_adapter(data_dir, sft["id"], sft["fine_tuned_checkpoint_step"],
                                         os.path.join(a.out, "sft_adapter"))
            lr = 1e-4 * float(a.lr_multiplier or 1.0)
            env = dict(os.environ, SMOLLM2_GGUF_DIR=os.path.dirname(os.path.abspath(a.model)),
                       PYTHONPATH=os.path.join(ROOT, "..", "shared", "peers", "banking77"))
            trl_out = os.path.join(a.out, "trl")
            os.makedirs(trl_out, exist_ok=True)
            t = time.time()
            subprocess.run([a.trl_python, os.path.join(ROOT, "bench", "trl_dpo_equal_settings.py"),
                            "--pairs", train_pairs_path, "--adapter", adapter_dir, "--epochs", a.epochs,
                            "--batch-size", a.batch_size, "--lr", str(lr), "--beta", a.beta, "--out", trl_out]
                           + (["--rpo-alpha", a.rpo_alpha] if a.rpo_alpha else []),
                           env=env, check=True, stdout=open(os.path.join(trl_out, "log.txt"), "w"),
                           stderr=subprocess.STDOUT)
            print(f"TRL peer: {time.time() - t:.0f} s; {trl_out}/train_result.json", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
