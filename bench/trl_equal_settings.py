"""The TRL peer (../shared/peers/banking77/train_sft.py) at Lathe's "auto" settings for
Banking77, for a same-run, equal-settings comparison with examples/banking77.rs:
3 epochs, batch 8, learning rate 1e-3, 3% warmup (ceil: 6 of 189 steps, as Lathe) then linear decay, clipping at 1.0,
AdamW without weight decay, LoRA r=8 alpha=16 dropout 0.05 on q,k,v,o,gate,up,down,
answer-only loss, seed 0. Everything else is the peer script's own flow.

    SMOLLM2_GGUF_DIR=models PYTHONPATH=../shared/peers/banking77 \
        python3 bench/trl_equal_settings.py --out /tmp/trl_equal
    (then the peer's eval_hf.py --adapter /tmp/trl_equal for accuracy)

Writes OUT/train_result.json with the loss at every step, wall time and peak RSS.
"""
import argparse, json, time, resource, torch
torch.set_num_threads(2)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer
from common import GGUF_DIR, GGUF_FILE, messages, splits

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=float, default=3)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--max-steps", type=int, default=-1)
ap.add_argument("--out", default="trl_equal_out")
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
assert all(p.dtype == torch.float32 for p in model.parameters())
model.hf_quantizer.remove_quantization_config(model)  # as the peer script does

train, _ = splits()
ds = Dataset.from_list([{"prompt": messages(t), "completion": [{"role": "assistant", "content": l}]} for t, l in train])
peft_cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
cfg = SFTConfig(output_dir=a.out, num_train_epochs=a.epochs, max_steps=a.max_steps, per_device_train_batch_size=8,
                gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0.03,
                max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
                max_length=128, seed=0, data_seed=0, completion_only_loss=True, packing=False,
                padding_free=False, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
                logging_steps=1, save_strategy="no", report_to="none", dataloader_num_workers=0,
                disable_tqdm=True)


class Timer(TrainerCallback):
    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        logs["elapsed_s"] = round(time.time() - self.t0, 2)
        print(json.dumps({"step": state.global_step, **logs}), flush=True)


trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                     callbacks=[Timer()])
t0 = time.time()
out = trainer.train()
train_s = time.time() - t0
trainer.save_model(a.out)
hist = trainer.state.log_history
n_tok = max((h.get("num_tokens", 0) for h in hist), default=0)
res = {
    "epochs": a.epochs, "learning_rate": a.lr, "steps": trainer.state.global_step, "train_wall_s": train_s,
    "nonpad_tokens_processed": n_tok, "train_tokens_per_s_nonpad": n_tok / train_s,
    "final_train_loss_avg": out.training_loss,
    "peak_rss_mib_getrusage": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "losses": [[h["step"], h["loss"]] for h in hist if "loss" in h],
}
json.dump(res, open(f"{a.out}/train_result.json", "w"), indent=1)
print(json.dumps({k: v for k, v in res.items() if k != "losses"}, indent=1))
