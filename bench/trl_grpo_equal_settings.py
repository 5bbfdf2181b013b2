"""The TRL peer of Lathe's RFT at equal settings, for a same-run comparison
with bench/banking77_rft.py: TRL's GRPOTrainer with PEFT on SmolLM2-135M-
Instruct (the same GGUF, dequantized to fp32), continuing from Lathe's SFT
adapter (PEFT's layout, read as is), on the same prompts, with the same
reward (the exact label), generations per prompt, prompts per optimizer step
(Lathe's batch: per-device batch 16 completions x gradient accumulation so
that one step sees batch x G completions, generated at once), learning rate
and schedule (linear, 3% warmup), clipping 1.0, epochs, max completion
length, temperature 1 (no top-k, no top-p), beta 0, TRL's default loss
(dapo), epsilon 0.2, one iteration per generation batch, no dropout, seed 0.

    SMOLLM2_GGUF_DIR=models PYTHONPATH=../shared/peers/banking77 \\
        python bench/trl_grpo_equal_settings.py --prompts OUT/rft/rft_train.jsonl \\
        --adapter OUT/sft_adapter --epochs 2 --batch-size 8 --generations 8 --out OUT/rft/trl

Writes OUT/train_result.json: per-step reward and loss, seconds per step
split into generation-and-scoring and training, peak RSS.
"""
import argparse, json, time, resource, torch
torch.set_num_threads(2)
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer
from trl_common import Timer, load_smollm2

ap = argparse.ArgumentParser()
ap.add_argument("--prompts", required=True, help="OpenAI RFT JSONL with messages and label")
ap.add_argument("--adapter", required=True, help="the SFT adapter to continue from (PEFT layout)")
ap.add_argument("--epochs", type=float, default=2)
ap.add_argument("--batch-size", type=int, default=8, help="prompts per optimizer step (Lathe's batch_size)")
ap.add_argument("--generations", type=int, default=8)
ap.add_argument("--max-completion-tokens", type=int, default=24)
ap.add_argument("--lr", type=float, default=5e-5)
ap.add_argument("--max-steps", type=int, default=-1)
ap.add_argument("--out", default="trl_grpo_out")
a = ap.parse_args()

tok, model = load_smollm2(a.adapter)
for m in model.modules():  # no dropout, as Lathe's RFT
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0

rows = [json.loads(l) for l in open(a.prompts) if l.strip()]
ds = Dataset.from_list([{"prompt": r["messages"], "label": r["label"]} for r in rows])


def exact_label(completions, label, **kw):
    return [1.0 if c[0]["content"] == l else 0.0 for c, l in zip(completions, label)]


completions_per_step = a.batch_size * a.generations
per_device = min(16, completions_per_step)
cfg = GRPOConfig(output_dir=a.out, num_train_epochs=a.epochs, max_steps=a.max_steps,
                 per_device_train_batch_size=per_device,
                 gradient_accumulation_steps=completions_per_step // per_device,
                 num_generations=a.generations, max_completion_length=a.max_completion_tokens,
                 temperature=1.0, top_p=1.0, top_k=0, learning_rate=a.lr, lr_scheduler_type="linear",
                 warmup_steps=0.03, max_grad_norm=1.0, weight_decay=0.0, beta=0.0, epsilon=0.2,
                 loss_type="dapo", scale_rewards="group", num_iterations=1, seed=0, data_seed=0,
                 gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, logging_steps=1,
                 save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True,
                 log_completions=False)


t_start = time.time()
trainer = GRPOTrainer(model=model, reward_funcs=exact_label, args=cfg, train_dataset=ds, processing_class=tok,
                      callbacks=[Timer()])
setup_s = time.time() - t_start
# Time generation and scoring (TRL's `_generate_and_score_completions`:
# sampling, decoding, rewards, advantages); the rest of a step is training.
gen_s = []
inner = trainer._generate_and_score_completions


def timed(*args, **kw):
    t = time.time()
    r = inner(*args, **kw)
    gen_s.append(time.time() - t)
    return r


trainer._generate_and_score_completions = timed
t0 = time.time()
out = trainer.train()
train_s = time.time() - t0
hist = trainer.state.log_history
steps = [h for h in hist if "reward" in h]
res = {
    "prompts": len(rows), "epochs": a.epochs, "batch_size": a.batch_size, "generations": a.generations,
    "learning_rate": a.lr, "steps": trainer.state.global_step, "setup_s": setup_s, "train_wall_s": train_s,
    "s_per_step": train_s / max(1, trainer.state.global_step),
    "generation_and_scoring_s": sum(gen_s), "training_s": train_s - sum(gen_s),
    "peak_rss_mib_getrusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "per_step": [{"step": h["step"], "reward": h.get("reward"), "reward_std": h.get("reward_std"),
                  "loss": h.get("loss"), "frac_reward_zero_std": h.get("frac_reward_zero_std"),
                  "completions/mean_length": h.get("completions/mean_length")} for h in steps],
}
json.dump(res, open(f"{a.out}/train_result.json", "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "per_step"}, indent=1))
