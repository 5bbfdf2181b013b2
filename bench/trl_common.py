"""What the TRL peer scripts share: SmolLM2-135M-Instruct from the same GGUF
as Lathe, dequantized to fp32 (transformers refuses to train a GGUF-loaded
model until its quantization flag is removed, as the peer's train_sft.py
does), optionally with a PEFT adapter to continue from, and a callback that
prints each log line with the wall time since training began."""
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from common import GGUF_DIR, GGUF_FILE


def load_smollm2(adapter=None):
    """(tokenizer, model): the fp32 model, with `adapter` (a PEFT folder)
    loaded trainable when given."""
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF_FILE, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.hf_quantizer.remove_quantization_config(model)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    return tok, model


class Timer(TrainerCallback):
    """Prints every log line as JSON with `elapsed_s` since training began."""

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kw):
        logs["elapsed_s"] = round(time.time() - self.t0, 2)
        print(json.dumps({"step": state.global_step, **logs}), flush=True)
