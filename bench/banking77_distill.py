#!/usr/bin/env python3
"""Distillation on Banking77 with SmolLM2-135M-Instruct, end to end through
Lathe's CLI (an opt-in quality benchmark; about 40 minutes on 2 cores).

1. Teacher: LoRA SFT on the 500 training rows of data/banking77 (the
   embedded trainer's "auto" settings, as the quickstart).
2. Labelling: the teacher answers N other Banking77 *training* texts (never
   the 300 held-out test rows) in an eval run whose one criterion checks that
   the answer is one of the 77 labels (a python grader: it knows no gold
   label); `lathe datasets distill` keeps the answers that passed as SFT rows.
3. Students, from the base model with the teacher's settings: one trained
   on the teacher's labels only, one on the gold labels of the same texts
   (the same number of rows).
4. Teacher, both students and the base model on the 300 held-out rows
   (exact label), with `lathe evals compare`.

Writes OUT/result.json.

    cargo build --release
    python3 bench/banking77_distill.py --out bench-out/distill [--label-rows 500] [--teacher-job job_...]
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
from banking77_dpo import (ROOT, SYSTEM, Lathe, banking77_csv, free_port, sft_row, wait_job,  # noqa: E402
                           wait_run, write_jsonl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lathe", default=os.path.join(ROOT, "target", "release", "lathe"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out", "distill"))
    ap.add_argument("--label-rows", type=int, default=500, help="training texts the teacher labels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-job", help="reuse this finished SFT job (in OUT/data) as the teacher")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    data = os.path.join(ROOT, "data", "banking77")
    times = {}

    addr = f"127.0.0.1:{free_port()}"
    data_dir = os.path.join(a.out, "data")
    os.environ["LATHE_DATA_DIR"] = data_dir
    server = subprocess.Popen([a.lathe, "serve", "--listen", addr, "--data-dir", data_dir],
                              stdout=subprocess.DEVNULL, stderr=open(os.path.join(a.out, "server.log"), "a"))
    for _ in range(200):
        if subprocess.run([a.lathe, "--addr", addr, "datasets", "list"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        sys.exit("the server did not come up")
    lathe = Lathe(a.lathe, addr)
    try:
        if not any('"smollm2"' in m for m in lathe.run("models", "list").strip().splitlines()):
            lathe.run("models", "add", a.model, "--name", "smollm2")

        train_csv = [(r["text"], r["category"]) for r in csv.DictReader(open(banking77_csv(), newline=""))]
        labels = sorted({l for _, l in train_csv})
        sft_texts = {json.loads(l)["messages"][1]["content"]
                     for l in open(os.path.join(data, "banking77_train_sft.jsonl"))}
        rest = [r for r in train_csv if r[0] not in sft_texts]
        random.Random(11).shuffle(rest)
        label_rows = rest[:a.label_rows]

        def train(path, suffix):
            ds = lathe.one("datasets", "upload", path, "--purpose", "sft")
            t = time.time()
            job = wait_job(lathe, lathe.one("jobs", "create", "--model", "smollm2", "--training-file", ds["id"],
                                            "--suffix", suffix, "--seed", str(a.seed))["id"])
            times[f"{suffix}_train_s"] = time.time() - t
            if job["status"] != "succeeded":
                sys.exit(f"{suffix} failed: {job}")
            return job

        # 1. The teacher.
        if a.teacher_job:
            teacher = lathe.one("jobs", "get", a.teacher_job)
        else:
            teacher = train(os.path.join(data, "banking77_train_sft.jsonl"), "teacher")
        teacher_model = teacher["fine_tuned_model"]

        messages = os.path.join(a.out, "messages.json")
        json.dump([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "{{ item.text }}"}],
                  open(messages, "w"))

        def run_eval(eval_id, dataset_id, model, name):
            run = lathe.one("evals", "run", eval_id, "--dataset", dataset_id, "--model", model,
                            "--messages", messages, "--temperature", "0", "--max-tokens", "16", "--seed", "0",
                            "--concurrency", "64", "--name", name)
            return wait_run(lathe, run["id"])

        # 2. The teacher labels texts it never saw; a label is kept when it
        # is one of the 77.
        valid = os.path.join(a.out, "valid_label.json")
        json.dump({"grader": {"type": "python", "name": "valid label",
                              "source": f"LABELS = set({json.dumps(labels)})\n"
                                        "def grade(sample, item):\n"
                                        "    return 1.0 if sample['output_text'].strip() in LABELS else 0.0\n"},
                   "pass_threshold": 1.0}, open(valid, "w"))
        labelling = lathe.one("evals", "create", "--name", "banking77 labelling", "--criterion", valid)
        items_path = os.path.join(a.out, "label_items.jsonl")
        write_jsonl(items_path, [{"text": t} for t, _ in label_rows])
        items_ds = lathe.one("datasets", "upload", items_path, "--purpose", "eval")
        t = time.time()
        labelled = run_eval(labelling["id"], items_ds["id"], teacher_model, "teacher labels")
        times["labelling_s"] = time.time() - t
        made = lathe.one("datasets", "distill", labelled["id"])
        kept = made["counts"]["kept"]
        distilled_path = os.path.join(a.out, "distilled.jsonl")
        lathe.run("datasets", "download", made["dataset"]["id"], "-o", distilled_path, json_out=False)
        distilled = [json.loads(l) for l in open(distilled_path)]
        gold = dict(label_rows)
        agree = sum(r["messages"][-1]["content"] == gold[r["messages"][1]["content"]] for r in distilled)
        print(f"teacher labelled {len(label_rows)} texts: kept {kept}, {agree} agree with gold", flush=True)

        # 3. Students from the base model: teacher labels, and gold labels
        # of the same texts.
        gold_path = os.path.join(a.out, "gold.jsonl")
        write_jsonl(gold_path, [sft_row(r["messages"][1]["content"], gold[r["messages"][1]["content"]])
                                for r in distilled])
        student = train(distilled_path, "student-distilled")
        gold_student = train(gold_path, "student-gold")

        # 4. Held-out accuracy.
        exact = os.path.join(a.out, "exact.json")
        json.dump({"type": "string_check", "name": "exact label", "input": "{{ sample.output_text }}",
                   "reference": "{{ item.label }}", "operation": "eq"}, open(exact, "w"))
        ev = lathe.one("evals", "create", "--name", "banking77 intent", "--criterion", exact)
        test_ds = lathe.one("datasets", "upload", os.path.join(data, "banking77_test_items.jsonl"),
                            "--purpose", "eval")
        runs = {}
        t = time.time()
        for name, model in [("base", "smollm2"), ("teacher", teacher_model),
                            ("student_distilled", student["fine_tuned_model"]),
                            ("student_gold", gold_student["fine_tuned_model"])]:
            runs[name] = run_eval(ev["id"], test_ds["id"], model, name)
        times["evals_s"] = time.time() - t
        cmp = json.loads(lathe.run("evals", "compare", runs["student_gold"]["id"],
                                   runs["student_distilled"]["id"]).strip().splitlines()[-1])
        test = cmp["paired_tests"][0]
        result = {
            "label_rows": len(label_rows), "kept": kept, "teacher_agrees_with_gold": agree,
            "counts": made["counts"],
            "held_out": {k: r["result_counts"]["passed"] for k, r in runs.items()},
            "items": runs["teacher"]["result_counts"]["total"],
            "distilled_vs_gold": {"gold_only_right": test["baseline_only_passed"],
                                  "distilled_only_right": test["run_only_passed"], "p_value": test["p_value"]},
            "times": times,
        }
        json.dump(result, open(os.path.join(a.out, "result.json"), "w"), indent=2)
        print(json.dumps(result, indent=2), flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
