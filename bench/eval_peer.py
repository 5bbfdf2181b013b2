"""The Python peer of examples/eval_bench.rs: the same eval work in an
asyncio loop with a semaphore, the way people write it by hand.

For each item {"n": i, "answer": str(i)}: POST the chat completion
"what is {i}" to the endpoint, parse the JSON reply, grade it with the
string check (output == answer), keep the result in memory. Prints one
JSON object: items, wall seconds, items per second, passed.

    python bench/eval_peer.py --url http://127.0.0.1:PORT/v1 --concurrency 64 --items 3200
"""

import argparse
import asyncio
import json
import time

import aiohttp


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--items", type=int, required=True)
    a = p.parse_args()
    items = [{"n": i, "answer": str(i)} for i in range(a.items)]
    sem = asyncio.Semaphore(a.concurrency)
    results = [None] * len(items)
    connector = aiohttp.TCPConnector(limit=a.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, item: dict) -> None:
            async with sem:
                body = {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"what is {item['n']}"}],
                    "temperature": 0.0,
                }
                async with session.post(f"{a.url}/chat/completions", json=body) as r:
                    r.raise_for_status()
                    reply = await r.json()
                text = reply["choices"][0]["message"]["content"]
                results[i] = {"sample": text, "passed": text == item["answer"]}

        start = time.perf_counter()
        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        wall = time.perf_counter() - start
    passed = sum(r["passed"] for r in results)
    assert passed == len(items), f"{passed} of {len(items)} passed"
    print(json.dumps({"client": "python-asyncio", "concurrency": a.concurrency, "items": len(items),
                      "wall_s": wall, "items_per_s": len(items) / wall, "passed": passed}))


if __name__ == "__main__":
    asyncio.run(main())
