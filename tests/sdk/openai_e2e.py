#!/usr/bin/env python3
"""The official `openai` SDK, unchanged, against `lathe serve` on the embedded default.

The flow of OpenAI's fine-tuning and RFT cookbook notebooks, pointed at Lathe by `base_url`:
upload training and validation files, fine-tune a tiny model with SFT and follow its events to
success, list checkpoints, chat with the fine-tuned model (plain and streaming), run and validate a
grader, create an eval and run it on two models, list failed output items, page through lists with
`after`, and check that a 404 and a 400 raise the SDK's `NotFoundError` and `BadRequestError` (with
the right `param`). Last, the server's OpenAPI document is validated.

Usage (from the repository root, after `cargo build --examples`; `.ci/run` does this):
    python3 tests/sdk/openai_e2e.py [--lathe target/debug/lathe] [--tiny-model target/debug/examples/tiny_model]
Needs the packages in tests/sdk/requirements.txt. Exits non-zero on the first failure.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from pathlib import Path

import openai
from openai import OpenAI

# OpenAI shut its hosted evals down; the SDK marks the evals resources deprecated.
warnings.filterwarnings("ignore", category=DeprecationWarning)

ROOT = Path(__file__).resolve().parents[2]
BANKING = ROOT / "data" / "banking77"


def step(name):
    print(f"-- {name}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout, every=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Server:
    """`lathe serve` in a temporary data directory, with the tiny model registered."""

    def __init__(self, lathe, tiny_model, workdir):
        self.data = Path(workdir) / "data"
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = open(Path(workdir) / "server.log", "w")
        self.proc = subprocess.Popen(
            [lathe, "serve", "--listen", self.addr, "--data-dir", str(self.data), "--job-poll-millis", "100"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        try:
            key_file = self.data / "admin.key"
            self.key = wait_until("admin.key", lambda: key_file.exists() and key_file.read_text().strip(), 120)
            wait_until("the server", self.answers, 120)
            models = self.data / "models" / "tiny"
            subprocess.run([tiny_model, str(models)], check=True, stdout=subprocess.DEVNULL)
            env = dict(os.environ, LATHE_ADDR=f"http://{self.addr}", LATHE_API_KEY=self.key)
            subprocess.run(
                [lathe, "models", "add", "--name", "tiny", str(models)], check=True, env=env, stdout=subprocess.DEVNULL
            )
        except BaseException:
            # A failed start leaves no server behind.
            self.stop()
            raise

    def answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"lathe serve exited with {self.proc.returncode}; see {self.log.name}")
        try:
            request = urllib.request.Request(
                f"http://{self.addr}/v1/models", headers={"Authorization": f"Bearer {self.key}"}
            )
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def jsonl_head(path, n):
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def upload(client, name, content, purpose):
    f = client.files.create(file=(name, content), purpose=purpose)
    assert f.object == "file" and f.id and f.bytes == len(content), f
    assert f.filename == name and f.purpose == purpose, f
    return f


def fine_tune(client):
    step("files: upload training and validation files")
    train = upload(client, "train.jsonl", jsonl_head(BANKING / "banking77_train_sft.jsonl", 32), "fine-tune")
    valid = upload(client, "valid.jsonl", jsonl_head(BANKING / "banking77_test_sft.jsonl", 8), "fine-tune")
    assert client.files.retrieve(train.id).id == train.id
    assert client.files.content(train.id).read() == jsonl_head(BANKING / "banking77_train_sft.jsonl", 32)

    step("fine_tuning.jobs: create an SFT job on the tiny model and follow its events")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=train.id,
        validation_file=valid.id,
        suffix="sdk",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        metadata={"from": "openai-sdk"},
        # Lathe's own: what the job's worker reserves on a Ray cluster.
        extra_body={"resources": {"cpus": 1}},
    )
    assert job.object == "fine_tuning.job" and job.model == "tiny", job
    assert job.status in ("validating_files", "queued", "running"), job.status
    assert job.method.type == "supervised", job.method
    seen = set()

    def done():
        for event in client.fine_tuning.jobs.list_events(job.id, limit=50):
            if event.id not in seen:
                seen.add(event.id)
                print(f"   {event.level}: {event.message}")
        current = client.fine_tuning.jobs.retrieve(job.id)
        return current if current.status in ("succeeded", "failed", "cancelled") else None

    job = wait_until("the fine-tuning job", done, 900, every=1.0)
    assert job.status == "succeeded", job
    assert job.fine_tuned_model and job.finished_at and job.trained_tokens, job
    assert any(j.id == job.id for j in client.fine_tuning.jobs.list(limit=10)), "the job is listed"

    step("fine_tuning.jobs.checkpoints: list")
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints, "at least one checkpoint"
    for c in checkpoints:
        assert c.object == "fine_tuning.job.checkpoint" and c.fine_tuning_job_id == job.id, c
        assert c.step_number > 0 and c.fine_tuned_model_checkpoint, c

    step("models: the fine-tuned model is listed and retrievable")
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    assert client.models.retrieve(job.fine_tuned_model).id == job.fine_tuned_model
    return job, [train, valid]


def chat(client, model):
    step(f"chat.completions: plain, on {model}")
    messages = [{"role": "user", "content": "My card has not arrived yet."}]
    completion = client.chat.completions.create(model=model, messages=messages, max_completion_tokens=8, seed=7)
    assert completion.object == "chat.completion" and completion.model == model, completion
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str), choice
    assert choice.finish_reason in ("stop", "length"), choice
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8, usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage

    step("chat.completions: streaming, with usage")
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_completion_tokens=8,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        for c in chunk.choices:
            text.append(c.delta.content or "")
            finish = c.finish_reason or finish
        usage = chunk.usage or usage
    assert finish in ("stop", "length"), finish
    assert usage is not None and usage.completion_tokens > 0, usage
    # The same seed on the same model: the same answer, streamed or not.
    assert "".join(text) == choice.message.content, ("".join(text), choice.message.content)


def stored(client, model):
    step("chat.completions: store=True, then list, filter, retrieve, update, messages, delete")
    kept = []
    for i, team in enumerate(["support", "support", "sales"]):
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"question {i}"}],
            max_completion_tokens=4,
            seed=i,
            store=True,
            metadata={"team": team, "sdk": "e2e"},
        )
        kept.append(completion)
    listed = [c.id for c in client.chat.completions.list(metadata={"sdk": "e2e"})]
    assert listed == [c.id for c in kept], (listed, [c.id for c in kept])
    support = client.chat.completions.list(metadata={"team": "support"}, model=model, limit=1)
    assert [c.id for c in support] == [kept[0].id, kept[1].id], "the SDK pages on with after"
    newest = client.chat.completions.list(metadata={"sdk": "e2e"}, order="desc", limit=1)
    assert newest.data[0].id == kept[2].id and newest.has_more, newest
    one = client.chat.completions.retrieve(kept[0].id)
    assert one.choices[0].message.content == kept[0].choices[0].message.content, one
    assert one.metadata == {"team": "support", "sdk": "e2e"}, one.metadata
    messages = list(client.chat.completions.messages.list(kept[0].id))
    assert [m.content for m in messages] == ["question 0"] and messages[0].id == f"{kept[0].id}-0", messages
    updated = client.chat.completions.update(kept[1].id, metadata={"team": "sales", "sdk": "e2e"})
    assert updated.metadata["team"] == "sales", updated
    sales = [c.id for c in client.chat.completions.list(metadata={"team": "sales"})]
    assert sales == [kept[1].id, kept[2].id], sales
    deleted = client.chat.completions.delete(kept[2].id)
    assert deleted.deleted and deleted.id == kept[2].id, deleted
    try:
        client.chat.completions.retrieve(kept[2].id)
        raise AssertionError("retrieved a deleted completion")
    except openai.NotFoundError:
        pass
    try:
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            store=True,
            metadata={f"k{i}": "v" for i in range(17)},
        )
        raise AssertionError("stored seventeen metadata pairs")
    except openai.BadRequestError as e:
        assert e.param == "metadata", (e.param, e.message)


def graders(client):
    step("fine_tuning.alpha.graders: run and validate")
    grader = {
        "type": "string_check",
        "name": "exact label",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "eq",
    }
    result = client.fine_tuning.alpha.graders.run(
        grader=grader, model_sample="card_arrival", item={"label": "card_arrival"}
    )
    assert result.reward == 1.0, result
    miss = client.fine_tuning.alpha.graders.run(grader=grader, model_sample="lost_card", item={"label": "card_arrival"})
    assert miss.reward == 0.0, miss
    valid = client.fine_tuning.alpha.graders.validate(grader=grader)
    assert valid.grader.type == "string_check", valid
    try:
        client.fine_tuning.alpha.graders.validate(grader={**grader, "operation": "sounds-like"})
        raise AssertionError("an invalid grader validated")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param and e.param.startswith("grader"), (e.param, e.message)
    return grader


def evals(client, grader, models):
    step("evals: create, run on two models, list failed output items")
    items = [json.loads(line) for line in jsonl_head(BANKING / "banking77_test_items.jsonl", 6).splitlines()]
    fields = sorted(items[0].keys())
    ev = client.evals.create(
        name="banking77 exact label",
        data_source_config={
            "type": "custom",
            "item_schema": {"type": "object", "properties": {k: {"type": "string"} for k in fields}},
            "include_sample_schema": True,
        },
        testing_criteria=[grader],
        metadata={"from": "openai-sdk"},
    )
    assert ev.object == "eval" and ev.name == "banking77 exact label", ev
    query_field = "text"
    runs = []
    for model in models:
        run = client.evals.runs.create(
            ev.id,
            name=f"on {model}",
            data_source={
                "type": "completions",
                "model": model,
                "source": {"type": "file_content", "content": [{"item": item} for item in items]},
                "input_messages": {
                    "type": "template",
                    "template": [{"role": "user", "content": "{{item." + query_field + "}}"}],
                },
                "sampling_params": {"max_completion_tokens": 8, "seed": 7},
            },
        )
        assert run.object == "eval.run" and run.eval_id == ev.id, run
        runs.append(run)
    for run in runs:
        finished = wait_until(
            f"eval run {run.id}",
            lambda: (r := client.evals.runs.retrieve(run.id, eval_id=ev.id)).status
            in ("completed", "failed", "canceled")
            and r,
            600,
            every=0.5,
        )
        assert finished.status == "completed", finished
        counts = finished.result_counts
        assert counts.total == len(items) and counts.passed + counts.failed + counts.errored == counts.total, counts
        failed = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail"))
        assert len(failed) == counts.failed, (len(failed), counts)
        for item in failed:
            assert item.status == "fail" and item.run_id == run.id, item
            assert item.sample.output, item
        print(f"   {finished.name}: {counts.passed}/{counts.total} passed")
    assert {r.id for r in client.evals.runs.list(ev.id)} == {r.id for r in runs}
    return ev


def paging(client, files):
    step("pagination: files with limit=1 and after")
    first = client.files.list(limit=1)
    assert len(first.data) == 1 and first.has_more, first
    second = client.files.list(limit=1, after=first.data[0].id)
    assert len(second.data) == 1 and second.data[0].id != first.data[0].id, second
    listed = [f.id for f in client.files.list(limit=1)]  # the SDK pages on by itself
    assert len(listed) == len(set(listed)), "no file twice"
    assert {f.id for f in files} <= set(listed), (files, listed)


def errors(client, files):
    step("errors: 404 and 400 as the SDK's exceptions")
    try:
        client.files.retrieve("file-does-not-exist")
        raise AssertionError("retrieved a file that does not exist")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body and e.body.get("message"), e.body
    try:
        client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
        raise AssertionError("retrieved a job that does not exist")
    except openai.NotFoundError:
        pass
    try:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-does-not-exist")
        raise AssertionError("created a job on a file that does not exist")
    except openai.BadRequestError as e:
        assert e.param == "training_file", (e.param, e.message)
    try:
        client.fine_tuning.jobs.create(
            model="tiny",
            training_file=files[0].id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "many"}}},
        )
        raise AssertionError("created a job with n_epochs 'many'")
    except openai.BadRequestError as e:
        assert e.param and "n_epochs" in e.param, (e.param, e.message)
    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("chatted with a model that does not exist")
    except openai.NotFoundError:
        pass


def openapi(server):
    step("openapi: /v1/openapi.json validates")
    from openapi_spec_validator import validate

    request = urllib.request.Request(
        f"http://{server.addr}/v1/openapi.json", headers={"Authorization": f"Bearer {server.key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        spec = json.load(response)
    validate(spec)
    paths = spec["paths"]
    for path in ("/v1/files", "/v1/fine_tuning/jobs", "/v1/evals", "/v1/chat/completions", "/v1/models"):
        assert path in paths, f"{path} is not in the OpenAPI document"
    print(f"   {len(paths)} paths")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lathe", default=str(ROOT / "target" / "debug" / "lathe"))
    parser.add_argument("--tiny-model", default=str(ROOT / "target" / "debug" / "examples" / "tiny_model"))
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lathe-sdk-") as workdir:
        server = Server(args.lathe, args.tiny_model, workdir)
        try:
            client = OpenAI(base_url=f"http://{server.addr}/v1", api_key=server.key)
            job, files = fine_tune(client)
            chat(client, job.fine_tuned_model)
            stored(client, job.fine_tuned_model)
            grader = graders(client)
            evals(client, grader, ["tiny", job.fine_tuned_model])
            paging(client, files)
            errors(client, files)
            openapi(server)
        except BaseException:
            server.stop()
            print(f"server log ({server.log.name}):", file=sys.stderr)
            sys.stderr.write(Path(server.log.name).read_text()[-8000:])
            raise
        server.stop()
    print(f"openai SDK {openai.__version__} end to end: passed in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
