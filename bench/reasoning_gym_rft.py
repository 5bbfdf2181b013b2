#!/usr/bin/env python3
"""RFT on a reasoning-gym task, SmolLM2-135M-Instruct, end to end through
Lathe's CLI (the opt-in quality benchmark of RFT with a python grader).

1. The grader environment: `lathe graders setup-python` with the
   `reasoning-gym` package (PyPI) in OUT/data/python-env, unless it is there.
2. Items from reasoning-gym's procedural generator (default: chain_sum at its
   easiest settings), made with the package's own seeds: training prompts,
   validation prompts and held-out test items, no question in two of them.
   Each line is OpenAI RFT JSONL: {"messages": [system, user], "entry": the
   generator's entry (question, answer, metadata)}.
3. The grader is a `multi` of two python graders: `correct` calls the
   package's `score_answer` on the last number of the output (correctness),
   `format` checks that the output is the number alone; the reward is
   `correct` (plus --format-weight times `format`, 0 by default: with 0.2 a
   135M model learns to answer with a bare number within 30 steps and its
   correctness falls to ~0, format hacking), and the job reports both
   apart, so a model that only learns the format shows.
4. RFT (GRPO) from the base model.
5. The same eval (the `correct` grader, pass at 1.0) on the held-out items
   for the base and the fine-tuned model, compared with `lathe evals compare`
   (exact McNemar on the items).

    cargo build --release
    python3 bench/reasoning_gym_rft.py --out bench-out/rg

Writes OUT/result.json, the job's metrics and the reward chart.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from banking77_dpo import ROOT, Lathe, free_port, vm_hwm_mib, wait_job, wait_run, write_jsonl  # noqa: E402

SYSTEM = "Solve the arithmetic problem. Answer with the number only."

CORRECT = r'''import re
import reasoning_gym

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def grade(sample, item):
    found = NUMBER.findall(sample["output_text"])
    entry = item["entry"]
    score = reasoning_gym.get_score_answer_fn(entry["metadata"]["source_dataset"])
    return float(score(found[-1] if found else None, entry))
'''

FORMAT = r'''import re


def grade(sample, item):
    return 1.0 if re.fullmatch(r"\s*-?\d+\s*", sample["output_text"]) else 0.0
'''

GENERATE = r'''import json, sys
import reasoning_gym
task, config = sys.argv[1], json.loads(sys.argv[2])
# Item i of a generator comes from Random(seed + i): the splits' seeds lie far apart.
for split, size in ((1, int(sys.argv[3])), (2, int(sys.argv[4])), (3, int(sys.argv[5]))):
    for e in reasoning_gym.create_dataset(task, size=size, seed=split * 10_000_000, **config):
        e["metadata"] = {k: v for k, v in e["metadata"].items() if k != "difficulty"}
        print(json.dumps({"split": split, "entry": e}))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "rg"))
    ap.add_argument("--task", default="chain_sum")
    ap.add_argument("--config", default='{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}',
                    help="the generator's settings (JSON)")
    ap.add_argument("--reasoning-gym", default="reasoning-gym==0.1.19")
    ap.add_argument("--prompts", type=int, default=800)
    ap.add_argument("--valid-prompts", type=int, default=40)
    ap.add_argument("--test-items", type=int, default=300)
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--batch-size", default="8")
    ap.add_argument("--generations", default="8")
    ap.add_argument("--max-completion-tokens", default="16")
    ap.add_argument("--lr-multiplier", default="2")
    ap.add_argument("--eval-interval", default="10")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format-weight", type=float, default=0.0, help="weight of the format grader in the reward")
    ap.add_argument("--base-run", help="reuse this finished eval run of the base model on the test items")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    data_dir = os.path.join(a.out, "data")
    # The CLI finds the admin key a loopback server writes into its data dir.
    os.environ["LATHE_DATA_DIR"] = data_dir
    env = os.path.join(data_dir, "python-env")
    times = {}

    # 1. The grader environment.
    if not os.path.exists(os.path.join(env, "bin", "python3")):
        t = time.time()
        subprocess.run([a.lathe, "graders", "setup-python", "--data-dir", data_dir, "--no-defaults",
                        "--package", f"{a.reasoning_gym}=reasoning_gym"], check=True)
        times["setup_python_s"] = time.time() - t

    # 2. Items, split by seed, no question twice.
    lines = subprocess.run([os.path.join(env, "bin", "python3"), "-W", "ignore", "-c", GENERATE, a.task, a.config,
                            str(a.prompts * 4), str(a.valid_prompts * 4), str(a.test_items * 4)],
                           check=True, capture_output=True, text=True).stdout.splitlines()
    seen, splits = set(), {1: [], 2: [], 3: []}
    want = {1: a.prompts, 2: a.valid_prompts, 3: a.test_items}
    for split in (3, 2, 1):  # the held-out items first: they are never trained on
        for r in map(json.loads, lines):
            e = r["entry"]
            if r["split"] == split and e["question"] not in seen and len(splits[split]) < want[split]:
                seen.add(e["question"])
                splits[split].append(e)
    assert all(len(splits[s]) == want[s] for s in splits), {s: len(v) for s, v in splits.items()}

    def line(e):
        return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": e["question"]}],
                "entry": e}

    write_jsonl(os.path.join(a.out, "train.jsonl"), [line(e) for e in splits[1]])
    write_jsonl(os.path.join(a.out, "valid.jsonl"), [line(e) for e in splits[2]])
    write_jsonl(os.path.join(a.out, "test_items.jsonl"), [{"question": e["question"], "entry": e} for e in splits[3]])
    correct = {"type": "python", "name": "correct", "source": CORRECT}
    grader = {"type": "multi", "name": f"{a.task} reward",
              "graders": {"correct": correct, "format": {"type": "python", "name": "format", "source": FORMAT}},
              "calculate_output": f"(correct + {a.format_weight} * format) / {1 + a.format_weight}"}
    json.dump(grader, open(os.path.join(a.out, "grader.json"), "w"), indent=1)
    json.dump({**correct, "pass_threshold": 1.0}, open(os.path.join(a.out, "correct.json"), "w"), indent=1)

    addr = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([a.lathe, "serve", "--listen", addr, "--data-dir", data_dir],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(a.out, "server.log"), "a"))
    for _ in range(200):
        if subprocess.run([a.lathe, "--addr", addr, "datasets", "list"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    lathe = Lathe(a.lathe, addr)
    try:
        if not any('"smollm2"' in m for m in lathe.run("models", "list").strip().splitlines()):
            lathe.run("models", "add", a.model, "--name", "smollm2")
        train_ds = lathe.one("datasets", "upload", os.path.join(a.out, "train.jsonl"), "--purpose", "rft")
        valid_ds = lathe.one("datasets", "upload", os.path.join(a.out, "valid.jsonl"), "--purpose", "rft")
        test_ds = lathe.one("datasets", "upload", os.path.join(a.out, "test_items.jsonl"), "--purpose", "eval")
        messages = os.path.join(a.out, "messages.json")
        json.dump([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{ item.question }}"}],
                  open(messages, "w"))
        ev = lathe.one("evals", "create", "--name", f"{a.task} (reasoning-gym)", "--criterion",
                       os.path.join(a.out, "correct.json"))

        def run_eval(model, name):
            run = lathe.one("evals", "run", ev["id"], "--dataset", test_ds["id"], "--model", model,
                            "--messages", messages, "--temperature", "0",
                            "--max-tokens", a.max_completion_tokens, "--seed", "0", "--concurrency", "64",
                            "--name", name)
            return wait_run(lathe, run["id"])

        t = time.time()
        base_run = lathe.one("evals", "get", a.base_run) if a.base_run else run_eval("smollm2", "base")
        times["base_eval_s"] = time.time() - t

        # 4. RFT from the base model.
        t = time.time()
        job = lathe.one("jobs", "create", "--method", "rft", "--model", "smollm2", "--grader",
                        os.path.join(a.out, "grader.json"), "--training-file", train_ds["id"],
                        "--validation-file", valid_ds["id"], "--suffix", "rg-rft", "--seed", str(a.seed),
                        "--epochs", a.epochs, "--batch-size", a.batch_size, "--generations-per-prompt",
                        a.generations, "--max-completion-tokens", a.max_completion_tokens,
                        "--learning-rate-multiplier", a.lr_multiplier, "--eval-interval", a.eval_interval)
        job = wait_job(lathe, job["id"])
        times["rft_s"] = time.time() - t
        peak_mib = vm_hwm_mib(server.pid)
        if job["status"] != "succeeded":
            sys.exit(f"RFT failed: {job}")
        lathe.run("jobs", "metrics", job["id"], "--svg", os.path.join(a.out, "rft_reward.svg"), json_out=False)
        metrics = [json.loads(l) for l in lathe.run("jobs", "metrics", job["id"]).strip().splitlines()]
        write_jsonl(os.path.join(a.out, "rft_metrics.jsonl"), metrics)
        open(os.path.join(a.out, "rft_events.txt"), "w").write(
            lathe.run("jobs", "events", job["id"], "--limit", "1000", json_out=False))

        # 5. The fine-tuned model on the held-out items, compared.
        t = time.time()
        rft_run = run_eval(job["fine_tuned_model"], "base+rft")
        times["rft_eval_s"] = time.time() - t
        cmp = json.loads(lathe.run("evals", "compare", base_run["id"], rft_run["id"],
                                   "--markdown", os.path.join(a.out, "comparison.md")).strip().splitlines()[-1])
        test = cmp["paired_tests"][-1]
        steps = [m for m in metrics if m.get("train_reward_mean") is not None]
        valid = [m for m in metrics if m.get("valid_reward_mean") is not None]

        def per_grader(m, split, name):
            return next((v for k, v in m["values"].items() if k.startswith(split) and k.endswith(name)), None)

        result = {
            "task": a.task, "config": json.loads(a.config), "prompts": a.prompts, "valid_prompts": a.valid_prompts,
            "test_items": a.test_items, "steps": len(steps), "generations": int(a.generations),
            "rft_model": job["fine_tuned_model"], "rft_checkpoint_step": job.get("fine_tuned_checkpoint_step"),
            "rft_peak_rss_mib": peak_mib, "rft_s_per_step": times["rft_s"] / max(1, len(steps)),
            "valid": [{"step": m["step"], "reward": m["valid_reward_mean"],
                       "correct": per_grader(m, "valid", "correct"), "format": per_grader(m, "valid", "format")}
                      for m in valid],
            "train_reward_first_last_10": [sum(m["train_reward_mean"] for m in steps[:10]) / 10,
                                           sum(m["train_reward_mean"] for m in steps[-10:]) / 10],
            "base_correct": base_run["result_counts"]["passed"], "rft_correct": rft_run["result_counts"]["passed"],
            "items": base_run["result_counts"]["total"],
            "base_only_right": test["baseline_only_passed"], "rft_only_right": test["run_only_passed"],
            "p_value": test["p_value"], "significant": test["significant"],
            "times": times, "base_run": base_run["id"], "rft_run": rft_run["id"],
        }
        json.dump(result, open(os.path.join(a.out, "result.json"), "w"), indent=2)
        print(json.dumps(result, indent=2), flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
