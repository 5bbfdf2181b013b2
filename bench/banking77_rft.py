#!/usr/bin/env python3
"""Banking77 RFT on SmolLM2-135M-Instruct, end to end through Lathe's CLI
(the opt-in quality benchmark of RFT).

Starts from Lathe's SFT model of bench/banking77_dpo.py (same data dir,
`--sft-job`), then:
1. RFT prompts: Banking77 *training* rows that are neither SFT's 500 rows
   nor its 60 validation rows (never the 300 held-out test rows), written
   as OpenAI RFT lines ({"messages": [system, user], "label": ...}); the
   grader is a string_check of the output against {{ item.label }}.
2. RFT (GRPO) from the SFT model: G completions per prompt at temperature
   1, the job's auto settings unless given.
3. The same eval on the 300 held-out rows for the SFT model and for the
   SFT+RFT model, and `lathe evals compare` (exact McNemar on the items).
4. With --trl-python: TRL's GRPOTrainer with PEFT at equal settings on the
   same prompts from the same SFT adapter (bench/trl_grpo_equal_settings.py).

    python3 bench/banking77_rft.py --out bench-out/dpo --sft-job job_... [--trl-python VENV/bin/python]

Writes OUT/rft/result.json and the job's metrics.
"""
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from banking77_dpo import (ROOT, SYSTEM, Lathe, banking77_csv, export_adapter, free_port, vm_hwm_mib,  # noqa: E402
                           wait_job, wait_run, write_jsonl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "dpo"), help="bench/banking77_dpo.py's OUT")
    ap.add_argument("--sft-job", required=True, help="the finished SFT job in OUT/data")
    ap.add_argument("--prompts", type=int, default=200, help="RFT training prompts")
    ap.add_argument("--valid-prompts", type=int, default=40)
    ap.add_argument("--epochs", default="2")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--generations", default="8")
    ap.add_argument("--max-completion-tokens", default="24")
    ap.add_argument("--lr-multiplier", default="1")
    ap.add_argument("--eval-interval", default="10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft-run", help="reuse this finished eval run of the SFT model on the 300 rows")
    ap.add_argument("--trl-python", help="a Python with torch, peft and trl: run TRL's GRPO on the same prompts")
    ap.add_argument("--trl-steps", type=int, default=0, help="stop TRL after this many steps (0: all)")
    a = ap.parse_args()
    out = os.path.join(a.out, "rft")
    os.makedirs(out, exist_ok=True)
    data = os.path.join(ROOT, "data", "banking77")
    data_dir = os.path.join(a.out, "data")
    # The CLI finds the admin key a loopback server writes into its data dir.
    os.environ["LATHE_DATA_DIR"] = data_dir
    addr = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([a.lathe, "serve", "--listen", addr, "--data-dir", data_dir],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(out, "server.log"), "a"))
    for _ in range(200):
        if subprocess.run([a.lathe, "--addr", addr, "datasets", "list"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    lathe = Lathe(a.lathe, addr)
    times = {}
    try:
        sft = lathe.one("jobs", "get", a.sft_job)
        sft_model = sft["fine_tuned_model"]

        # 1. Prompts: training rows outside SFT's rows and its validation
        # rows (bench/banking77_dpo.py's split: Random(7), the first 60).
        train_csv = [(r["text"], r["category"]) for r in csv.DictReader(open(banking77_csv(), newline=""))]
        sft_texts = {json.loads(l)["messages"][1]["content"] for l in open(os.path.join(data, "banking77_train_sft.jsonl"))}
        rest = [r for r in train_csv if r[0] not in sft_texts]
        random.Random(7).shuffle(rest)
        pool = rest[60:]
        random.Random(11).shuffle(pool)
        rows = pool[:a.prompts + a.valid_prompts]

        def line(text, label):
            return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                    "label": label}

        write_jsonl(os.path.join(out, "rft_train.jsonl"), [line(t, l) for t, l in rows[:a.prompts]])
        write_jsonl(os.path.join(out, "rft_valid.jsonl"), [line(t, l) for t, l in rows[a.prompts:]])
        grader = {"type": "string_check", "name": "exact label", "input": "{{ sample.output_text }}",
                  "reference": "{{ item.label }}", "operation": "eq"}
        json.dump(grader, open(os.path.join(out, "grader.json"), "w"))
        train_ds = lathe.one("datasets", "upload", os.path.join(out, "rft_train.jsonl"), "--purpose", "rft")
        valid_ds = lathe.one("datasets", "upload", os.path.join(out, "rft_valid.jsonl"), "--purpose", "rft")

        # 2. RFT from the SFT model.
        t = time.time()
        job = lathe.one("jobs", "create", "--method", "rft", "--model", sft_model, "--grader",
                        os.path.join(out, "grader.json"), "--training-file", train_ds["id"],
                        "--validation-file", valid_ds["id"], "--suffix", "b77-rft", "--seed", str(a.seed),
                        "--epochs", a.epochs, "--batch-size", a.batch_size, "--generations-per-prompt",
                        a.generations, "--max-completion-tokens", a.max_completion_tokens,
                        "--learning-rate-multiplier", a.lr_multiplier, "--eval-interval", a.eval_interval)
        job = wait_job(lathe, job["id"])
        times["rft_s"] = time.time() - t
        peak_mib = vm_hwm_mib(server.pid)
        if job["status"] != "succeeded":
            sys.exit(f"RFT failed: {job}")
        lathe.run("jobs", "metrics", job["id"], "--svg", os.path.join(out, "rft_loss.svg"), json_out=False)
        metrics = [json.loads(l) for l in lathe.run("jobs", "metrics", job["id"]).strip().splitlines()]
        write_jsonl(os.path.join(out, "rft_metrics.jsonl"), metrics)
        open(os.path.join(out, "rft_events.txt"), "w").write(
            lathe.run("jobs", "events", job["id"], "--limit", "1000", json_out=False))

        # 3. Both models on the 300 held-out rows.
        messages = os.path.join(out, "messages.json")
        json.dump([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{ item.text }}"}],
                  open(messages, "w"))
        exact = os.path.join(out, "exact.json")
        json.dump({**grader, "reference": "{{ item.label }}"}, open(exact, "w"))
        ev = lathe.one("evals", "create", "--name", "banking77 intent (rft)", "--criterion", exact)
        test_ds = lathe.one("datasets", "upload", os.path.join(data, "banking77_test_items.jsonl"), "--purpose", "eval")

        def run_eval(model, name):
            run = lathe.one("evals", "run", ev["id"], "--dataset", test_ds["id"], "--model", model,
                            "--messages", messages, "--temperature", "0", "--max-tokens", "16", "--seed", "0",
                            "--concurrency", "64", "--name", name)
            return wait_run(lathe, run["id"])

        t = time.time()
        sft_run = lathe.one("evals", "get", a.sft_run) if a.sft_run else run_eval(sft_model, "sft")
        rft_run = run_eval(job["fine_tuned_model"], "sft+rft")
        times["evals_s"] = time.time() - t
        cmp = json.loads(lathe.run("evals", "compare", sft_run["id"], rft_run["id"],
                                   "--markdown", os.path.join(out, "comparison.md")).strip().splitlines()[-1])
        test = cmp["paired_tests"][-1]
        steps = [m for m in metrics if m.get("train_reward_mean") is not None]
        valid = [(m["step"], m["valid_reward_mean"]) for m in metrics if m.get("valid_reward_mean") is not None]
        split = {k: sum(m["values"].get(f"train_time/{k}_s", 0) for m in steps) for k in
                 ("sampling", "grading", "training")}
        result = {
            "sft_model": sft_model, "rft_model": job["fine_tuned_model"],
            "rft_checkpoint_step": job.get("fine_tuned_checkpoint_step"),
            "prompts": a.prompts, "valid_prompts": a.valid_prompts, "steps": len(steps),
            "generations": int(a.generations), "rft_peak_rss_mib": peak_mib,
            "rft_s_per_step": times["rft_s"] / max(1, len(steps)),
            "time_split_s": split,
            "valid_reward_mean": valid,
            "train_reward_first_last_5": [sum(m["train_reward_mean"] for m in steps[:5]) / 5,
                                          sum(m["train_reward_mean"] for m in steps[-5:]) / 5],
            "sft_correct": sft_run["result_counts"]["passed"], "rft_correct": rft_run["result_counts"]["passed"],
            "items": sft_run["result_counts"]["total"],
            "sft_only_right": test["baseline_only_passed"], "rft_only_right": test["run_only_passed"],
            "p_value": test["p_value"], "significant": test["significant"],
            "times": times, "sft_run": sft_run["id"], "rft_run": rft_run["id"],
        }
        json.dump(result, open(os.path.join(out, "result.json"), "w"), indent=2)
        print(json.dumps(result, indent=2), flush=True)

        # 4. The TRL peer at equal settings.
        if a.trl_python:
            server.terminate()
            server.wait()
            adapter_dir = export_adapter(data_dir, sft["id"], sft["fine_tuned_checkpoint_step"],
                                         os.path.join(a.out, "sft_adapter"))
            env = dict(os.environ, SMOLLM2_GGUF_DIR=os.path.dirname(os.path.abspath(a.model)),
                       PYTHONPATH=os.path.join(ROOT, "..", "shared", "peers", "banking77"))
            trl_out = os.path.join(out, "trl")
            os.makedirs(trl_out, exist_ok=True)
            cmd = [a.trl_python, os.path.join(ROOT, "bench", "trl_grpo_equal_settings.py"),
                   "--prompts", os.path.join(out, "rft_train.jsonl"), "--adapter", adapter_dir,
                   "--epochs", a.epochs, "--batch-size", a.batch_size, "--generations", a.generations,
                   "--max-completion-tokens", a.max_completion_tokens,
                   "--lr", str(5e-5 * float(a.lr_multiplier)), "--out", trl_out]
            if a.trl_steps:
                cmd += ["--max-steps", str(a.trl_steps)]
            t = time.time()
            subprocess.run(cmd, env=env, check=True, stdout=open(os.path.join(trl_out, "log.txt"), "w"),
                           stderr=subprocess.STDOUT)
            print(f"TRL peer: {time.time() - t:.0f} s; {trl_out}/train_result.json", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
