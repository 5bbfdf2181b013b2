"""The TRL peer of Lathe's DPO at equal settings, for a same-run comparison
with bench/banking77_dpo.py: TRL's DPOTrainer with PEFT on SmolLM2-135M-
Instruct (the same GGUF, dequantized to fp32), continuing from Lathe's SFT
adapter (PEFT's layout, read as is) against a frozen copy of it as the
reference (what TRL does with a PEFT model that already has an adapter),
on the same pairs, beta, LoRA shape, learning rate and schedule (linear, 3%
warmup), clipping 1.0, epochs, batch size and sequence budget, AdamW
without weight decay, no dropout (TRL's DPO default, as Lathe), sigmoid
loss (plus TRL's "sft" term weighted by --rpo-alpha for RPO), seed 0.

    SMOLLM2_GGUF_DIR=models PYTHONPATH=../shared/peers/banking77 \\
        python bench/trl_dpo_equal_settings.py --pairs OUT/dpo_train.jsonl \\
        --adapter OUT/sft_adapter --epochs 3 --batch-size 8 --lr 1e-4 --out OUT/trl

Writes OUT/train_result.json: per-step loss, rewards/accuracies and margins,
wall time, seconds per pair and peak RSS.
"""
import argparse, json, time, resource, torch
torch.set_num_threads(2)
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from trl_common import Timer, load_smollm2

ap = argparse.ArgumentParser()
ap.add_argument("--pairs", required=True, help="OpenAI DPO JSONL (input.messages, preferred/non_preferred_output)")
ap.add_argument("--adapter", required=True, help="the SFT adapter to continue from (PEFT layout)")
ap.add_argument("--epochs", type=float, default=3)
ap.add_argument("--batch-size", type=int, default=8)
ap.add_argument("--lr", type=float, default=1e-4)
ap.add_argument("--beta", type=float, default=0.1)
ap.add_argument("--rpo-alpha", type=float, default=0.0,
                help="RPO: add this times the chosen tokens' mean NLL (TRL: loss_type sigmoid+sft, loss_weights)")
ap.add_argument("--max-length", type=int, default=2048)
ap.add_argument("--out", default="trl_dpo_out")
a = ap.parse_args()

tok, model = load_smollm2(a.adapter)

rows = [json.loads(l) for l in open(a.pairs) if l.strip()]
ds = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                         "rejected": r["non_preferred_output"]} for r in rows])
cfg = DPOConfig(output_dir=a.out, num_train_epochs=a.epochs, per_device_train_batch_size=a.batch_size,
                gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0.03,
                max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                beta=a.beta, loss_type=["sigmoid", "sft"] if a.rpo_alpha else ["sigmoid"],
                loss_weights=[1.0, a.rpo_alpha] if a.rpo_alpha else None, max_length=a.max_length, disable_dropout=True,
                precompute_ref_log_probs=True, seed=0, data_seed=0, gradient_checkpointing=False, bf16=False,
                fp16=False, use_cpu=True, logging_steps=1, save_strategy="no", report_to="none",
                dataloader_num_workers=0, disable_tqdm=True)


t_start = time.time()
trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
setup_s = time.time() - t_start  # includes precomputing the reference log-probs
t0 = time.time()
out = trainer.train()
train_s = time.time() - t0
hist = trainer.state.log_history
steps = [h for h in hist if "loss" in h]
pair_passes = len(rows) * a.epochs
res = {
    "pairs": len(rows), "epochs": a.epochs, "batch_size": a.batch_size, "learning_rate": a.lr, "beta": a.beta,
    "rpo_alpha": a.rpo_alpha, "steps": trainer.state.global_step, "setup_s_with_reference": setup_s, "train_wall_s": train_s,
    "s_per_pair": (setup_s + train_s) / pair_passes, "s_per_pair_training_only": train_s / pair_passes,
    "final_train_loss_avg": out.training_loss,
    "peak_rss_mib_getrusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "per_step": [{"step": h["step"], "loss": h["loss"],
                  "rewards/accuracies": h.get("rewards/accuracies"), "rewards/margins": h.get("rewards/margins"),
                  "rewards/chosen": h.get("rewards/chosen"), "rewards/rejected": h.get("rewards/rejected"),
                  "logps/chosen": h.get("logps/chosen"), "logps/rejected": h.get("logps/rejected")} for h in steps],
}
json.dump(res, open(f"{a.out}/train_result.json", "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "per_step"}, indent=1))
