"""The server through the real `openai` client: every field we support, streamed and
not, chat and completions, and outputs that do not depend on the load."""

import random
import subprocess
import threading
import time

import requests

from conftest import BIN, Server

MODEL = "smollm2"


def test_health_and_models(server, client):
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}
    models = client.models.list()
    assert len(models.data) == 1 and models.data[0].object == "model"


def test_greedy_text_equals_llama_cpp_and_the_cli(client, golden):
    n = golden["n_predict"]
    for case in golden["cases"]:
        r = client.completions.create(
            model=MODEL, prompt=case["prompt"], max_tokens=n, temperature=0
        )
        assert r.choices[0].text == case["continuation"], case["prompt"]
        assert r.usage.completion_tokens == n
        assert r.choices[0].finish_reason == "length"
    case = golden["cases"][1]
    cli = subprocess.run(
        [BIN, "-p", case["prompt"], "-n", "24", "--temp", "0", "-t", "2"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    r = client.completions.create(model=MODEL, prompt=case["prompt"], max_tokens=24, temperature=0)
    assert r.choices[0].text == cli


def chat_messages(text):
    return [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": text},
    ]


def test_chat_streamed_equals_whole(client):
    msgs = chat_messages("Name three colours.")
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=20, temperature=0)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    stream = client.chat.completions.create(
        model=MODEL,
        messages=msgs,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_stream_and_echo(client):
    r = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=6, temperature=0)
    s = client.completions.create(
        model=MODEL, prompt="One, two,", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text
    e = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=6, temperature=0, echo=True)
    assert e.choices[0].text == "One, two," + r.choices[0].text


def test_token_id_prompts(server, client):
    ids = requests.post(server.url + "/tokenize", json={"content": "Hello there", "add_special": True}, timeout=10).json()["tokens"]
    text = requests.post(server.url + "/detokenize", json={"tokens": ids}, timeout=10).json()["content"]
    assert text.endswith("Hello there")
    a = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0)
    b = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text


def test_stop_max_tokens_and_finish_reasons(client):
    base = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=30, temperature=0)
    text = base.choices[0].text
    assert base.choices[0].finish_reason == "length" and base.usage.completion_tokens == 30
    # Stop at the first newline: the text ends right before it.
    stop = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=30, temperature=0, stop=["\n", "zzz"]
    )
    assert stop.choices[0].finish_reason == "stop"
    assert stop.choices[0].text == text[: text.index("\n")]
    one = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=1, temperature=0)
    assert one.usage.completion_tokens == 1 and text.startswith(one.choices[0].text)


def test_sampling_fields(client):
    prompt = "Write a word:"
    kw = dict(model=MODEL, prompt=prompt, max_tokens=16, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=7, **kw)
    b = client.completions.create(seed=7, **kw)
    assert a.choices[0].text == b.choices[0].text, "the same seed gives the same text"
    texts = {client.completions.create(seed=s, **kw).choices[0].text for s in range(8)}
    assert len(texts) > 1, "other seeds give other texts"
    greedy = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0).choices[0].text
    top1 = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, temperature=1.5, seed=3, extra_body={"top_k": 1}
    ).choices[0].text
    assert top1 == greedy, "top_k 1 is greedy"
    minp = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=16, temperature=1.5, seed=3, extra_body={"min_p": 1.0}
    ).choices[0].text
    assert minp == greedy, "min_p 1 keeps only the best token"
    rep = "the the the the the the the the"
    plain = client.completions.create(model=MODEL, prompt=rep, max_tokens=12, temperature=0).choices[0].text
    for field in [
        {"presence_penalty": 2.0},
        {"frequency_penalty": 2.0},
        {"extra_body": {"repeat_penalty": 3.0}},
    ]:
        pen = client.completions.create(model=MODEL, prompt=rep, max_tokens=12, temperature=0, **field)
        assert pen.choices[0].text != plain, field


def test_n_choices(client):
    r = client.chat.completions.create(
        model=MODEL, messages=chat_messages("Say something."), max_tokens=10, temperature=1.0, seed=11, n=3
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 30
    assert len({c.message.content for c in r.choices}) > 1, "each choice has its own seed"
    s = client.chat.completions.create(
        model=MODEL,
        messages=chat_messages("Say something."),
        max_tokens=10,
        temperature=1.0,
        seed=11,
        n=3,
        stream=True,
    )
    got = {0: "", 1: "", 2: ""}
    for c in s:
        for ch in c.choices:
            got[ch.index] += ch.delta.content or ""
    assert [got[i] for i in range(3)] == [c.message.content for c in r.choices]


def test_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=chat_messages("Count to five."),
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert e.logprob <= 0 and e.token == e.top_logprobs[0].token and e.logprob == tops[0]
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    assert "".join(e.token for e in content) == r.choices[0].message.content
    c = client.completions.create(model=MODEL, prompt="Count to five:", max_tokens=8, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    assert all(len(t) == 2 for t in lp.top_logprobs)


def stream_tokens(url, prompt, max_tokens):
    """A greedy streamed completion's tokens and log-probabilities, read raw."""
    import json

    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logprobs": 2,
    }
    out = []
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            ch = json.loads(line[6:])["choices"][0]
            lp = ch["logprobs"]
            if lp:
                out += list(zip(lp["tokens"], lp["token_logprobs"], [sorted(t.items()) for t in lp["top_logprobs"]]))
    return out


def test_sixteen_concurrent_streams_equal_their_solo_runs(server):
    rng = random.Random(5)
    words = open(__file__).read().split()
    prompts = []
    for i in range(16):
        n = rng.choice([3, 20, 90, 200, 400, 700])
        start = rng.randrange(len(words) - n)
        prompts.append(" ".join(words[start : start + n]))
    solo = [stream_tokens(server.url, p, 24) for p in prompts]
    together = [None] * 16

    def run(i):
        time.sleep(rng_delays[i])
        together[i] = stream_tokens(server.url, prompts[i], 24)

    rng_delays = [rng.uniform(0, 1.5) for _ in prompts]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(16):
        assert len(solo[i]) == 24
        assert together[i] == solo[i], f"stream {i} ({len(prompts[i].split())} words)"


def test_prefix_cache_reuses_whole_chunks_and_changes_no_bit(server, client):
    history = " ".join(["The committee reviewed the annual budget and discussed new parks."] * 70)
    turn1 = chat_messages(history)
    a = client.chat.completions.create(model=MODEL, messages=turn1, max_tokens=8, temperature=0)
    turn2 = turn1 + [
        {"role": "assistant", "content": a.choices[0].message.content},
        {"role": "user", "content": "Summarise that in one word."},
    ]
    b = client.chat.completions.create(model=MODEL, messages=turn2, max_tokens=8, temperature=0, logprobs=True)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert cached % 128 == 0 and cached >= a.usage.prompt_tokens - 128, (cached, a.usage)
    # A server that never saw turn 1 gives the same tokens, bit for bit.
    fresh = Server("--parallel", "1")
    try:
        import openai

        c = openai.OpenAI(base_url=fresh.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model=MODEL, messages=turn2, max_tokens=8, temperature=0, logprobs=True
        )
    finally:
        assert fresh.terminate() == 0
    assert c.usage.prompt_tokens_details.cached_tokens == 0
    assert [(e.token, e.logprob) for e in c.choices[0].logprobs.content] == [
        (e.token, e.logprob) for e in b.choices[0].logprobs.content
    ]


def json_schemas(n):
    rng = random.Random(3)
    leaves = [
        {"type": "string", "maxLength": 24},
        {"type": "integer", "minimum": 0, "maximum": 1000},
        {"type": "boolean"},
        {"enum": ["red", "green", "blue"]},
        {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50}, "maxItems": 3},
        {"type": ["string", "null"], "maxLength": 12},
    ]
    names = ["name", "age", "city", "colour", "ok", "tags", "count", "title", "note"]
    for i in range(n):
        keys = rng.sample(names, rng.randint(1, 4))
        props = {k: rng.choice(leaves) for k in keys}
        if i % 5 == 0:
            props["inner"] = {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 9}, "y": {"type": "string", "maxLength": 10}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        yield {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def test_fifty_json_schema_requests_return_valid_json(client):
    import json
    from concurrent.futures import ThreadPoolExecutor

    import jsonschema

    def ask(i_schema):
        i, schema = i_schema
        r = client.chat.completions.create(
            model=MODEL,
            messages=chat_messages(f"Describe person number {i} as JSON."),
            max_tokens=300,
            temperature=0.7 if i % 2 else 0,
            seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}},
        )
        return schema, r.choices[0]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, enumerate(json_schemas(50))))
    for schema, choice in results:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)
    # Any object: this small model keeps adding keys, so a reply may end at max_tokens;
    # then every character so far must still be valid JSON (the parse fails only at
    # the very end, or in a string left open there, for want of more text).
    for prompt in ["Give me a JSON object about cats.", "Reply with a JSON object with your name."]:
        obj = client.chat.completions.create(
            model=MODEL, messages=chat_messages(prompt), max_tokens=120,
            temperature=0, response_format={"type": "json_object"},
        ).choices[0]
        text = obj.message.content
        assert text.startswith("{")
        if obj.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)
        else:
            try:
                json.loads(text)
                raise AssertionError(f"a complete object should have stopped: {text}")
            except json.JSONDecodeError as e:
                assert e.pos == len(text) or e.msg == "Unterminated string starting at", (e, text)
