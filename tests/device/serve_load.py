#!/usr/bin/env python3
"""Load on a running `finetune serve` from the GPU machine (which has no Node.js): CONCURRENCY streaming chat requests
at a time, TOTAL in all, each for MAX_TOKENS tokens with ignore_eos, over plain HTTP with the standard library.
Prints one JSON line: completed, refused (429), other failures, requests/s, completion tokens/s, mean time to first token.

  python3 serve_load.py <base url, e.g. http://127.0.0.1:8000> <model id> [concurrency] [total] [max_tokens]
"""
import http.client, json, sys, threading, time, urllib.parse

base, model = sys.argv[1], sys.argv[2]
concurrency, total, max_tokens = (int(x) for x in (sys.argv[3:6] + ["64", "2000", "16"][len(sys.argv[3:6]):]))
url = urllib.parse.urlparse(base)
lock = threading.Lock()
state = {"next": 0, "ok": 0, "refused": 0, "failed": 0, "tokens": 0, "ttft": []}


def one(i):
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": f"Question {i % 16}: who are you?"}], "temperature": 0,
                       "max_tokens": max_tokens, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    r = conn.getresponse()
    if r.status == 429:
        r.read(); return "refused", 0, None
    if r.status != 200:
        r.read(); return "failed", 0, None
    first, tokens = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
            first = time.perf_counter() - start
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return ("ok" if tokens == max_tokens else "failed"), tokens, first


def worker():
    while True:
        with lock:
            if state["next"] >= total: return
            i = state["next"]; state["next"] += 1
        kind, tokens, first = one(i)
        with lock:
            state[kind] += 1; state["tokens"] += tokens
            if first is not None: state["ttft"].append(first)


t0 = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
seconds = time.perf_counter() - t0
print(json.dumps({"bench": "serve_load", "concurrency": concurrency, "total": total, "max_tokens": max_tokens, "completed": state["ok"],
                  "refused": state["refused"], "failed": state["failed"], "seconds": round(seconds, 3),
                  "requests_per_s": round(state["ok"] / seconds, 1), "completion_tokens_per_s": round(state["tokens"] / seconds, 1),
                  "mean_ttft_ms": round(1000 * sum(state["ttft"]) / max(1, len(state["ttft"])), 1)}))
