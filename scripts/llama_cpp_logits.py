#!/usr/bin/env python3
"""llama.cpp's logits on the SmolLM2 GGUF, for checking Lathe's quantized path.

Lathe's generation multiplies by the GGUF's own Q4_1 weights (activations
quantized to 8 bits per block of 32, as llama.cpp does). This records what
llama.cpp computes for the same token ids as tests/fixtures/
smollm2_reference_logits.json (the transformers float32 reference), at every
position: argmax, the top-8 (id, logit) pairs and the logits at the same probe
ids, and its greedy answer to the chat prompt. `tests/it/engine_smollm2.rs` compares Lathe's quantized logits with both.

    python3 -m venv /tmp/llama && /tmp/llama/bin/pip install llama-cpp-python==0.3.36 numpy
    /tmp/llama/bin/python scripts/llama_cpp_logits.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--out tests/fixtures/smollm2_llama_cpp_logits.json]
"""

import argparse
import json
import platform

import numpy as np
from llama_cpp import Llama, __version__

REFERENCE = "tests/fixtures/smollm2_reference_logits.json"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("--out", default="tests/fixtures/smollm2_llama_cpp_logits.json")
    args = ap.parse_args()
    reference = json.load(open(REFERENCE))
    probes = reference["probe_ids"]
    llm = Llama(model_path=args.gguf, n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    out = {
        "description": "llama.cpp's logits for the token ids of smollm2_reference_logits.json, "
        "made by scripts/llama_cpp_logits.py",
        "meta": {
            "llama_cpp_python": __version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "n_threads": 2,
        },
        "probe_ids": probes,
        "prompts": {},
    }
    for name, prompt in reference["prompts"].items():
        ids = prompt["token_ids"]
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
        positions = []
        for row in logits:
            top = np.argsort(-row)[:8]
            positions.append(
                {
                    "argmax": int(top[0]),
                    "top8": [[int(i), round(float(row[i]), 5)] for i in top],
                    "probe_logits": [round(float(row[i]), 5) for i in probes],
                }
            )
        out["prompts"][name] = {"token_ids": ids, "positions": positions}
    # Greedy decoding after the chat prompt, not stopped at EOS, as the
    # reference's `greedy` section.
    n_greedy = len(reference["greedy"]["ids"])
    ids = list(reference["prompts"]["a_chat"]["token_ids"])
    llm.reset()
    llm.eval(ids)
    greedy = []
    for _ in range(n_greedy):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(tok)
        llm.eval([tok])
    out["greedy"] = {"prompt": "a_chat", "ids": greedy}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
