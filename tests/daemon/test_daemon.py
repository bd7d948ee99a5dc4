#!/usr/bin/env python3
"""Integration tests of dsachatd against a real daemon, a real model and a temporary store.

    python3 tests/daemon/test_daemon.py --dsachatd build-dev/dsachatd [--model FILE] [--threads N] [--only NAME]
                                        [--keep]

Each check prints one line: "ok  NAME", "FAIL NAME: details" or "skip NAME: reason".  Exit status 0 when every
check passed (skips included), 1 otherwise.  The model is $DSA_MODEL, --model, or the cached default model
(~/.cache/dsachat/models/SmolLM2-135M-Instruct.Q4_1.gguf); a missing model is a failure, not a skip: the model is
part of the test environment.  Every daemon runs with --socket and --store under a fresh tempfile.mkdtemp(), which
is removed afterwards unless a check failed or --keep was given.

The protocol is daemon/PROTOCOL-SPEC.tmp.md (to become man/dsachat-protocol.7).
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsachat_client import Client, Closed, Daemon, DaemonError, default_model_path  # noqa: E402

GREEDY = {"temp": 0}
STOPS = {"eos", "length", "context", "cancelled", "shutdown"}
STAT_KEYS = {"prompt_tokens": int, "reused_tokens": int, "prefilled_tokens": int, "generated_tokens": int,
             "prefill_ms": (int, float), "decode_ms": (int, float), "tok_s": (int, float),
             "ttft_ms": (int, float), "dsa": bool, "k": int, "context_used": int, "context_max": int,
             "history_dropped": int, "rebuilt": bool}
SESSION_KEYS = {"id": int, "name": str, "created_ms": int, "updated_ms": int, "messages": int, "tokens": int,
                "generating": bool, "settings": dict}
MESSAGE_KEYS = {"id": int, "role": str, "content": str, "created_ms": int, "truncated": bool, "in_context": bool}
SYSTEM = ("You are a concise assistant running inside a test suite. Answer every question in one short "
          "sentence, without lists, greetings or follow-up questions.")
LONG_PROMPT = "Tell me a very long story about a dragon who learns to bake bread."


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_types(obj, spec, what):
    expect(isinstance(obj, dict), f"{what} is not an object: {obj!r}")
    for k, t in spec.items():
        expect(k in obj, f"{what} lacks {k!r}: {json.dumps(obj)[:400]}")
        v = obj[k]
        if t is int:
            ok = is_int(v)
        elif t == (int, float):
            ok = is_num(v)
        else:
            ok = isinstance(v, t)
        expect(ok, f"{what}.{k} has the wrong type: {v!r}")


def err_code(reply):
    e = reply.get("error") if isinstance(reply, dict) else None
    return e.get("code") if isinstance(e, dict) else None


def expect_error(reply, codes, what):
    codes = {codes} if isinstance(codes, str) else set(codes)
    code = err_code(reply)
    expect(code in codes, f"{what}: expected error {'/'.join(sorted(codes))}, got {json.dumps(reply)[:300]}")
    msg = reply["error"].get("message")
    expect(isinstance(msg, str) and msg and "\n" not in msg,
           f"{what}: error message is not one non-empty line: {msg!r}")
    expect("ok" not in reply or reply["ok"] is not True, f"{what}: error reply also says ok: {reply}")


# ---- the harness ---------------------------------------------------------------------------------------------

class Env:
    def __init__(self, args):
        self.binary = os.path.abspath(args.dsachatd)
        self.model = args.model
        self.threads = args.threads
        self.root = tempfile.mkdtemp(prefix="dsachatd-test-")
        self.daemon = None          # the shared daemon most checks use
        self.model_info = None
        self.clients = []
        self.daemons = []           # every daemon started (stopped at the end)
        self.notes = []

    def new_daemon(self, name, store=None):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        dm = Daemon(self.binary, os.path.join(d, "s.sock"), store or os.path.join(d, "store"), model=self.model,
                    threads=self.threads, log_path=os.path.join(d, "dsachatd.log"))
        self.daemons.append(dm)
        return dm

    async def start_main(self):
        self.daemon = self.new_daemon(f"main{len(self.daemons)}")
        await self.daemon.start()
        c = await self.connect()
        self.model_info = await c.call("model.info")
        await c.close()

    async def connect(self, daemon=None, name=""):
        c = await Client.connect((daemon or self.daemon).socket, name=name)
        self.clients.append(c)
        return c

    def note(self, s):
        self.notes.append(s)


CHECKS = []


def check(name, timeout=60):
    def deco(fn):
        CHECKS.append((name, fn, timeout))
        return fn
    return deco


async def new_session(c, **params):
    r = await c.call("session.create", **params)
    check_types(r.get("session"), SESSION_KEYS, "session.create's session")
    return r["session"]["id"]


async def wait_first_token(c, res, timeout=60):
    """Read res's events until its first token (CheckFailed when it ends or errors first)."""
    deadline = time.monotonic() + timeout
    while not res.tokens:
        expect(not res.finished, f"stream ended before a token: {res.describe()}")
        expect(time.monotonic() < deadline, f"no token after {timeout} s: {res.describe()}")
        await c.chat_next(res, deadline - time.monotonic())


def check_stream(res, max_tokens, what, sid=None):
    """The shape of one finished chat.send stream: start, tokens, done; stats present and sane."""
    expect(res.error is None, f"{what}: error reply: {res.error}")
    expect(not res.closed, f"{what}: connection closed before done: {res.describe()}")
    expect(res.done is not None, f"{what}: no done: {res.describe()}")
    ev = [o.get("event") for o in res.events]
    expect(ev[0] == "start", f"{what}: first event is not start: {ev[:5]}")
    expect(ev[-1] == "done" and ev.count("done") == 1 and ev.count("start") == 1,
           f"{what}: events not start, token*, done: {ev}")
    mid = ev[1:-1]
    n_pre = mid.count("prefill")
    expect(all(e == "prefill" for e in mid[:n_pre]) and all(e == "token" for e in mid[n_pre:]),
           f"{what}: events between start and done not prefill*, token*: {ev}")
    for o in res.events:
        expect(o.get("id") == res.id, f"{what}: event with a foreign id: {o}")
    st = res.start
    expect(is_int(st.get("message")), f"{what}: start.message is not an int: {st}")
    if sid is not None:
        expect(st.get("session") == sid, f"{what}: start.session {st.get('session')!r} != {sid}")
    for t in res.tokens:
        expect(isinstance(t, str), f"{what}: token text is not a string: {t!r}")
    d = res.done
    expect(is_int(d.get("message")), f"{what}: done.message is not an int: {d}")
    expect(d.get("stop") in STOPS, f"{what}: done.stop {d.get('stop')!r}")
    s = d.get("stats")
    check_types(s, STAT_KEYS, f"{what}: done.stats")
    gen, n_ev = s["generated_tokens"], len(res.tokens)
    expect(0 <= gen <= max_tokens, f"{what}: generated_tokens {gen} outside 0..{max_tokens}")
    expect(n_ev <= gen, f"{what}: {n_ev} token events > generated_tokens {gen}")
    if d["stop"] == "length":
        expect(gen == max_tokens, f"{what}: stop length with generated_tokens {gen} != max_tokens {max_tokens}")
    if res.text.isascii() and d["stop"] in ("length", "cancelled"):
        # every generated ASCII token is streamed as one event (an EOS is not a reply token)
        expect(n_ev == gen, f"{what}: {n_ev} token events but generated_tokens {gen} (stop {d['stop']})")
    if res.text.isascii() and d["stop"] == "eos":
        expect(gen - n_ev in (0, 1), f"{what}: {n_ev} token events but generated_tokens {gen} (stop eos)")
    done_prev = 0
    for o in res.events[1:1 + n_pre]:
        expect(is_int(o.get("done")) and o.get("total") == s["prefilled_tokens"] and done_prev < o["done"] < o["total"],
               f"{what}: prefill event {o} after done {done_prev} (prefilled_tokens {s['prefilled_tokens']})")
        done_prev = o.get("done") if is_int(o.get("done")) else done_prev
    expect(s["prompt_tokens"] == s["reused_tokens"] + s["prefilled_tokens"],
           f"{what}: prompt_tokens {s['prompt_tokens']} != reused {s['reused_tokens']} + prefilled "
           f"{s['prefilled_tokens']}")
    expect(s["prompt_tokens"] > 0 and s["reused_tokens"] >= 0 and s["prefilled_tokens"] >= 0,
           f"{what}: token counts: {s}")
    for k in ("prefill_ms", "decode_ms", "tok_s", "ttft_ms"):
        expect(s[k] >= 0, f"{what}: stats.{k} < 0: {s[k]}")
    expect(s["prompt_tokens"] <= s["context_used"] <= s["context_max"],
           f"{what}: context_used {s['context_used']} not within prompt_tokens {s['prompt_tokens']} .. "
           f"context_max {s['context_max']}")
    expect(s["context_used"] >= s["prompt_tokens"] + gen - 1,
           f"{what}: context_used {s['context_used']} < prompt {s['prompt_tokens']} + generated {gen} - 1")
    expect(s["history_dropped"] >= 0, f"{what}: history_dropped {s['history_dropped']}")
    return s


def check_history_msgs(msgs, what):
    expect(isinstance(msgs, list), f"{what}: messages is not a list: {msgs!r}")
    for m in msgs:
        check_types(m, MESSAGE_KEYS, f"{what}: message")
        expect(m["role"] in ("system", "user", "assistant"), f"{what}: role {m['role']!r}")
        expect(m.get("tokens") is None or is_int(m["tokens"]), f"{what}: message.tokens {m.get('tokens')!r}")
        if m["role"] == "assistant":
            expect(isinstance(m.get("stats"), dict), f"{what}: assistant message without stats: {m}")
    ids = [m["id"] for m in msgs]
    expect(ids == sorted(ids) and len(set(ids)) == len(ids), f"{what}: message ids not increasing: {ids}")
    return msgs


async def history(c, sid, what="history"):
    r = await c.call("session.history", session=sid)
    check_types(r.get("session"), SESSION_KEYS, f"{what}: session")
    expect(r["session"]["id"] == sid, f"{what}: history of session {r['session']['id']} for {sid}")
    return check_history_msgs(r.get("messages"), what)


def strip_system(msgs):
    return [m for m in msgs if m["role"] != "system"]


async def wait_idle(c, sid, timeout=20):
    """Poll session.get until the session no longer generates; returns the session."""
    deadline = time.monotonic() + timeout
    while True:
        s = (await c.call("session.get", session=sid))["session"]
        if not s["generating"]:
            return s
        expect(time.monotonic() < deadline, f"session {sid} still generating after {timeout} s")
        await asyncio.sleep(0.1)


async def wait_no_generation(c, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        st = await c.call("daemon.stats")
        if st["generating"] == 0:
            return st
        expect(time.monotonic() < deadline, f"daemon.stats generating={st['generating']} after {timeout} s")
        await asyncio.sleep(0.1)


# ---- checks -----------------------------------------------------------------------------------------------------

@check("socket mode 0600")
async def t_socket_mode(env):
    mode = os.stat(env.daemon.socket).st_mode & 0o777
    expect(mode == 0o600, f"socket {env.daemon.socket} has mode {oct(mode)}, spec says 0600")


@check("hello, model.info, daemon.stats shapes")
async def t_shapes(env):
    c = await env.connect()
    h = await c.request("hello", protocol=1)
    expect(h.get("ok") is True and h.get("protocol") == 1, f"hello: {h}")
    expect(isinstance(h.get("daemon"), str) and h["daemon"].startswith("dsachatd"), f"hello.daemon: {h}")
    expect(h.get("backend") in ("cpu", "cuda"), f"hello.backend: {h.get('backend')!r}")
    expect(isinstance(h.get("model"), dict), f"hello.model is not an object: {h}")
    h2 = await c.request("hello", protocol=99)
    expect(h2.get("ok") is True and h2.get("protocol") == 1, f"hello from a newer client (99): {h2}")
    h3 = await c.request("hello")
    expect(h3.get("ok") is True and h3.get("protocol") == 1, f"hello without protocol: {h3}")

    mi = await c.request("model.info")
    expect(mi.get("ok") is True, f"model.info: {mi}")
    check_types(mi, {"name": str, "path": str, "fingerprint": str, "arch": str, "n_layer": int, "n_embd": int,
                     "n_vocab": int, "n_ctx": int, "backend": str}, "model.info")
    expect("chat_template" in mi and "dsa" in mi, f"model.info lacks chat_template/dsa: {list(mi)}")
    expect(mi["n_layer"] > 0 and mi["n_embd"] > 0 and mi["n_vocab"] > 0 and mi["n_ctx"] > 0, f"model.info: {mi}")
    expect(os.path.basename(mi["path"]) == os.path.basename(env.model),
           f"model.info.path {mi['path']!r} is not the model we passed ({env.model})")
    if os.path.basename(env.model) == "SmolLM2-135M-Instruct.Q4_1.gguf":
        expect((mi["arch"], mi["n_layer"], mi["n_embd"], mi["n_vocab"]) == ("llama", 30, 576, 49152),
               f"model.info for SmolLM2-135M: arch/n_layer/n_embd/n_vocab = {mi['arch']}/{mi['n_layer']}/"
               f"{mi['n_embd']}/{mi['n_vocab']}")
    if mi["dsa"] is not None:
        check_types(mi["dsa"], {"enabled": bool, "k": int}, "model.info.dsa")
        for k in ("indexer", "heads", "dim"):
            expect(k in mi["dsa"], f"model.info.dsa lacks {k}: {mi['dsa']}")
    for k in ("name", "fingerprint", "n_layer", "n_ctx"):
        expect(h["model"].get(k) == mi[k], f"hello.model.{k} {h['model'].get(k)!r} != model.info's {mi[k]!r}")

    st = await c.request("daemon.stats")
    expect(st.get("ok") is True, f"daemon.stats: {st}")
    check_types(st, {"version": str, "uptime_s": (int, float), "clients": int, "sessions_open": int,
                     "generating": int, "queued": int, "tokens_generated": int, "tokens_prefilled": int,
                     "tokens_reused": int, "requests": int, "errors": int}, "daemon.stats")
    expect(st["clients"] >= 1, f"daemon.stats.clients {st['clients']} with this connection open")
    expect(st["requests"] >= 5, f"daemon.stats.requests {st['requests']} after 5 requests on this connection")

    u = await c.request("no.such.op", x=1)
    expect_error(u, "unknown_op", "op no.such.op")

    # ids of any JSON type come back unchanged
    for rid in ["str-id", {"a": [1, "x", None, True]}, 3.5, -7, [1, [2]], ""]:
        r = await c.send({"op": "hello"}, req_id=rid)
        rep = await c.next(rid)
        c.forget(rid)
        expect(rep.get("ok") is True and rep.get("id") == rid, f"id {rid!r} not echoed: {rep}")
    # a request without an id gets a reply without one
    await c.send({"op": "hello"}, req_id=None)
    r = await c.next_unrouted(10)
    expect("id" not in r and r.get("ok") is True, f"reply to a request without id: {r}")

    # pipelined requests in one write are answered in order
    reqs = [{"op": "hello", "id": 101}, {"op": "model.info", "id": 102}, {"op": "nope", "id": 103},
            {"op": "daemon.stats", "id": 104}, {"op": "session.list", "id": 105}]
    await c.send_raw(b"".join(json.dumps(q).encode() + b"\n" for q in reqs))
    got = []
    for _ in reqs:
        got.append(await c.next_unrouted(10))
    expect([g.get("id") for g in got] == [101, 102, 103, 104, 105],
           f"pipelined replies out of order: {[g.get('id') for g in got]}")
    expect(err_code(got[2]) == "unknown_op" and all(g.get("ok") is True for g in got[:2] + got[3:]),
           f"pipelined replies: {[json.dumps(g)[:80] for g in got]}")
    expect(isinstance(got[4].get("sessions"), list), f"session.list: {got[4]}")


@check("malformed input: each error, then the same connection still works", timeout=90)
async def t_malformed(env):
    c = await env.connect()
    sid = await new_session(c, name="malformed")
    st0 = await c.call("daemon.stats")
    n_err = 0

    async def still_works(after):
        r = await c.request("hello", protocol=1)
        expect(r.get("ok") is True, f"after {after}: hello failed: {r}")

    # (raw line, acceptable codes): no id can be read from these, the reply comes without one (or with whatever
    # id the daemon managed to read: it is not registered, so it lands in unrouted either way)
    raw_cases = [
        (b'{"op":"hello"\n', "bad_json", "truncated JSON"),
        (b'{"op":"hello",}\n', "bad_json", "trailing comma"),
        (b'[1,2,3]\n', "bad_json", "a JSON array"),
        (b'[{"op":"hello"}]\n', "bad_json", "an array holding a request"),
        (b'"hello"\n', "bad_json", "a JSON string"),
        (b'42\n', "bad_json", "a JSON number"),
        (b'null\n', "bad_json", "JSON null"),
        (b'hello\n', "bad_json", "bare word"),
        (b'{"op":"hello"} {"op":"hello"}\n', "bad_json", "two objects on one line"),
        (b'{"op":"hello","x":"\xff\xfe"}\n', "bad_utf8", "invalid UTF-8 bytes ff fe"),
        (b'{"op":"hello","x":"\xc0\xaf"}\n', "bad_utf8", "overlong UTF-8 sequence c0 af"),
        (b'{"op":"hello","x":"\xed\xa0\x80"}\n', "bad_utf8", "UTF-8-encoded surrogate ed a0 80"),
        (b'{"op":"hello","x":"\xe2\x82"}\n', "bad_utf8", "truncated UTF-8 sequence e2 82"),
        (b'\xff\n', "bad_utf8", "a lone ff byte"),
    ]
    for line, code, what in raw_cases:
        env.step = what
        await c.send_raw(line)
        r = await c.next_unrouted(10)
        expect_error(r, code, what)
        n_err += 1
        await still_works(what)

    # valid JSON, invalid request: the reply carries the request's id
    cases = [
        ({"x": 1}, ("bad_request", "unknown_op"), "missing op"),
        ({"op": 5}, ("bad_request", "unknown_op"), "op 5"),
        ({"op": None}, ("bad_request", "unknown_op"), "op null"),
        ({"op": "HELLO"}, "unknown_op", "op HELLO (ops are case-sensitive)"),
        ({"op": "session.get"}, "bad_request", "session.get without session"),
        ({"op": "session.get", "session": "x-no-such-session"}, "no_session", "session name x-no-such-session"),
        ({"op": "session.get", "session": 987654}, "no_session", "session id 987654"),
        ({"op": "session.get", "session": True}, "bad_request", "session true"),
        ({"op": "session.get", "session": 1.5}, "bad_request", "session 1.5"),
        ({"op": "session.get", "session": [sid]}, "bad_request", "session [id]"),
        ({"op": "session.history", "session": "x"}, "no_session", "session.history of missing session x"),
        ({"op": "chat.send", "session": "x", "text": "hi"}, "no_session", "chat.send to missing session x"),
        ({"op": "chat.send", "session": sid, "text": 5}, "bad_request", "chat.send text 5"),
        ({"op": "chat.send", "session": sid, "text": ""}, "bad_request", "chat.send empty text"),
        ({"op": "chat.send", "session": sid}, "bad_request", "chat.send without text"),
        ({"op": "chat.send", "text": "hi"}, "bad_request", "chat.send without session"),
        ({"op": "chat.send", "session": sid, "text": "hi", "max_tokens": 0}, "bad_request", "max_tokens 0"),
        ({"op": "chat.send", "session": sid, "text": "hi", "max_tokens": 65537}, "bad_request",
         "max_tokens 65537"),
        ({"op": "chat.send", "session": sid, "text": "hi", "max_tokens": "4"}, "bad_request", "max_tokens \"4\""),
        ({"op": "chat.send", "session": sid, "text": "hi", "max_tokens": 2.5}, "bad_request", "max_tokens 2.5"),
        ({"op": "chat.send", "session": sid, "text": "hi", "sampling": "greedy"}, "bad_request",
         "sampling \"greedy\""),
        ({"op": "chat.send", "session": sid, "text": "hi", "sampling": {"temp": -1}}, "bad_request",
         "sampling temp -1"),
        ({"op": "chat.send", "session": sid, "text": "hi", "sampling": {"top_p": 0}}, "bad_request",
         "sampling top_p 0"),
        ({"op": "session.create", "name": 5}, "bad_request", "session.create name 5"),
        ({"op": "session.create", "settings": {"temp": "hot"}}, "bad_request", "session.create settings temp"),
        ({"op": "session.rename", "session": sid}, "bad_request", "session.rename without name"),
        ({"op": "session.export", "session": sid, "format": "pdf"}, "bad_request", "session.export format pdf"),
        ({"op": "chat.cancel", "session": "x-no-such-session"}, "no_session", "chat.cancel of missing session"),
    ]
    for i, (req, code, what) in enumerate(cases):
        env.step = what
        rid = f"bad-{i}"
        await c.send(req, req_id=rid)
        r = await c.next(rid, 10)
        c.forget(rid)
        expect_error(r, code, what)
        expect(r.get("id") == rid, f"{what}: error reply without the request's id: {r}")
        n_err += 1
        await still_works(what)
    # the session is untouched by the refused chat.sends
    msgs = await history(c, sid)
    expect(strip_system(msgs) == [], f"refused chat.sends left messages: {msgs}")

    # blank lines are ignored: the next reply is the hello's
    env.step = "blank lines are ignored: the next reply is the hello's"
    await c.send_raw(b"\n\n\r\n\n")
    await c.send({"op": "hello"}, req_id="after-blank")
    r = await c.next("after-blank", 10)
    expect(r.get("ok") is True, f"hello after blank lines: {r}")
    expect(c.unrouted.empty(), f"blank lines got replies: {c.unrouted._queue}")

    # a trailing \r is tolerated
    env.step = 'a trailing \\r is tolerated'
    await c.send_raw(b'{"op":"hello","id":"cr"}\r\n')
    r = await c.next_unrouted(10)
    expect(r.get("ok") is True and r.get("id") == "cr", f"hello ending in \\r\\n: {r}")

    # one request split over several writes
    env.step = 'one request split over several writes'
    await c.send_raw(b'{"op":"he')
    await asyncio.sleep(0.2)
    await c.send_raw(b'llo","id":"sp')
    await asyncio.sleep(0.2)
    await c.send_raw(b'lit"}\n')
    r = await c.next_unrouted(10)
    expect(r.get("ok") is True and r.get("id") == "split", f"request split over 3 writes: {r}")

    # a line of exactly 1 MiB (newline excluded) is accepted
    env.step = 'a line of exactly 1 MiB (newline excluded) is accepted'
    head, tail = b'{"op":"hello","id":"mib","pad":"', b'"}'
    line = head + b"a" * ((1 << 20) - len(head) - len(tail)) + tail
    assert len(line) == 1 << 20
    await c.send_raw(line + b"\n")
    r = await c.next_unrouted(30)
    expect(r.get("ok") is True and r.get("id") == "mib", f"a line of exactly 1048576 bytes: {json.dumps(r)[:300]}")

    # a line over 1 MiB: line_too_long, the rest of it is skipped, and the next line (same write) is answered
    env.step = 'a line over 1 MiB: line_too_long, the rest of it is skipped, and the next line (same write) is answered'
    long_line = b'{"op":"hello","id":"toolong","pad":"' + b"b" * (1 << 20) + b'"}\n'
    await c.send_raw(long_line + b'{"op":"hello","id":"after-long"}\n')
    r = await c.next_unrouted(30)
    expect_error(r, "line_too_long", "a line of 1 MiB + 37 bytes")
    n_err += 1
    r = await c.next_unrouted(30)
    expect(r.get("ok") is True and r.get("id") == "after-long",
           f"the line after an over-long line (same write) was not answered as hello: {json.dumps(r)[:300]}")
    # an over-long line in pieces, garbage in it that would parse as requests if the rest were not skipped
    env.step = 'an over-long line in pieces, garbage in it that would parse as requests if the rest were not skipped'
    await c.send_raw(b"x" * (1 << 20))
    await asyncio.sleep(0.1)
    await c.send_raw(b'x"}{"op":"nope"}' + b"y" * 5000)
    await asyncio.sleep(0.1)
    await c.send_raw(b'\n{"op":"hello","id":"after-long2"}\n')
    r = await c.next_unrouted(30)
    expect_error(r, "line_too_long", "an over-long line sent in 3 writes")
    n_err += 1
    r = await c.next_unrouted(30)
    expect(r.get("ok") is True and r.get("id") == "after-long2",
           f"after an over-long line in pieces: {json.dumps(r)[:300]}")

    await still_works("all malformed cases")
    st1 = await c.call("daemon.stats")
    expect(st1["errors"] - st0["errors"] >= n_err,
           f"daemon.stats.errors grew by {st1['errors'] - st0['errors']} over {n_err} error replies")


@check("multi-turn chat (3 greedy turns, reuse, history)", timeout=120)
async def t_multiturn(env):
    c = await env.connect()
    sid = await new_session(c, name="multi", system=SYSTEM)
    s0 = (await c.call("session.get", session=sid))["session"]
    expect(s0["system"] == SYSTEM, f"session.system {s0.get('system')!r}")
    expect(s0["generating"] is False, f"new session generating: {s0}")
    texts = ["What is the capital of France?", "And what is the capital of Italy?", "Name a river in Italy."]
    mt = 12
    results = []
    st0 = await c.call("daemon.stats")
    for i, text in enumerate(texts):
        res = await c.chat(sid, text, max_tokens=mt, sampling=GREEDY, timeout=60)
        what = f"turn {i + 1}"
        s = check_stream(res, mt, what, sid)
        expect(s["context_max"] == env.model_info["n_ctx"],
               f"{what}: context_max {s['context_max']} != model.info n_ctx {env.model_info['n_ctx']}")
        expect(s["history_dropped"] == 0 and s["rebuilt"] is False, f"{what}: dropped/rebuilt: {s}")
        expect(res.done["stop"] in ("eos", "length"), f"{what}: stop {res.done['stop']}")
        expect(res.text.strip() != "", f"{what}: empty reply")
        env.note(f"turn {i + 1}: stop {res.done['stop']}, prompt {s['prompt_tokens']} = reused {s['reused_tokens']} "
                 f"+ prefilled {s['prefilled_tokens']}, generated {s['generated_tokens']}, text {res.text!r}")
        if i > 0:
            p = results[-1].done["stats"]
            expect(s["reused_tokens"] > 0, f"{what}: reused_tokens 0")
            expect(s["reused_tokens"] >= p["prompt_tokens"] + p["generated_tokens"] - 1,
                   f"{what}: reused_tokens {s['reused_tokens']} < previous turn's prompt {p['prompt_tokens']} + "
                   f"generated {p['generated_tokens']} - 1 (history re-prefilled)")
            expect(s["prefilled_tokens"] <= len(text.encode()) + 24,
                   f"{what}: prefilled {s['prefilled_tokens']} tokens for a {len(text)}-byte message")
        results.append(res)

    st1 = await c.call("daemon.stats")
    for k, sk in (("tokens_generated", "generated_tokens"), ("tokens_prefilled", "prefilled_tokens"),
                  ("tokens_reused", "reused_tokens")):
        want = sum(r.done["stats"][sk] for r in results)
        expect(st1[k] - st0[k] == want, f"daemon.stats.{k} grew by {st1[k] - st0[k]} over 3 turns whose "
                                        f"{sk} add up to {want}")
    msgs = await history(c, sid)
    sysm = [m for m in msgs if m["role"] == "system"]
    expect(len(sysm) <= 1 and (not sysm or (msgs[0] is sysm[0] and sysm[0]["content"] == SYSTEM)),
           f"system messages in history: {sysm}")
    rest = strip_system(msgs)
    expect([m["role"] for m in rest] == ["user", "assistant"] * 3,
           f"history roles: {[m['role'] for m in msgs]}")
    for i, res in enumerate(results):
        u, a = rest[2 * i], rest[2 * i + 1]
        expect(u["content"] == texts[i], f"turn {i + 1}: stored user message {u['content']!r}")
        expect(a["content"] == res.text,
               f"turn {i + 1}: stored reply {a['content']!r} != streamed {res.text!r}")
        expect(u["id"] == res.start["message"], f"turn {i + 1}: start.message {res.start['message']} != "
                                                f"user message id {u['id']}")
        expect(a["id"] == res.done["message"], f"turn {i + 1}: done.message {res.done['message']} != "
                                               f"assistant message id {a['id']}")
        expect(u["in_context"] and a["in_context"], f"turn {i + 1}: messages not in_context")
        if res.done["stop"] == "eos":
            expect(a["truncated"] is False, f"turn {i + 1}: reply ended by eos stored truncated")
        expect(u["truncated"] is False, f"turn {i + 1}: user message truncated")
    s1 = (await c.call("session.get", session=sid))["session"]
    expect(s1["messages"] == len(msgs), f"session.messages {s1['messages']} != {len(msgs)} in history")
    expect(s1["tokens"] > 0 and s1["generating"] is False, f"session after 3 turns: {s1}")
    expect(s1["updated_ms"] >= s0["updated_ms"], "updated_ms went backwards")
    lst = (await c.call("session.list"))["sessions"]
    expect(lst and lst[0]["id"] == sid, f"session.list does not start with the last updated session {sid}: "
                                        f"{[s['id'] for s in lst]}")
    env.multiturn = (sid, texts, results)


@check("session ops: get by name, rename, set, export, fork, ambiguous, delete", timeout=60)
async def t_session_ops(env):
    c = await env.connect()
    sid, texts, results = getattr(env, "multiturn", (None, None, None))
    expect(sid is not None, "needs the multi-turn chat's session")
    s = (await c.call("session.get", session="multi"))["session"]
    expect(s["id"] == sid, f"session.get by name 'multi' gave {s['id']}")
    r = await c.call("session.rename", session=sid, name="multi-renamed")
    expect(r["session"]["name"] == "multi-renamed", f"rename: {r}")
    expect_error(await c.request("session.get", session="multi"), "no_session", "old name after rename")
    r = await c.call("session.set", session=sid, settings={"temp": 0.5, "max_tokens": 33})
    expect(r["session"]["settings"].get("temp") == 0.5 and r["session"]["settings"].get("max_tokens") == 33,
           f"session.set settings: {r['session']['settings']}")
    ex = await c.call("session.export", session=sid, format="json")
    expect(ex.get("format") == "json" and isinstance(ex.get("text"), str), f"export json: {str(ex)[:200]}")
    try:
        json.loads(ex["text"])
    except ValueError as e:
        raise CheckFailed(f"session.export json is not JSON: {e}: {ex['text'][:200]!r}")
    expect(results[0].text in ex["text"] or json.dumps(results[0].text)[1:-1] in ex["text"],
           "export json lacks the first reply")
    md = await c.call("session.export", session=sid, format="markdown")
    expect(texts[0] in md["text"], f"export markdown lacks the first message: {md['text'][:200]!r}")
    msgs = await history(c, sid)
    rest = strip_system(msgs)
    f = await c.call("session.fork", session=sid, message=rest[1]["id"], name="forked")
    fid = f["session"]["id"]
    expect(fid != sid and f["session"].get("forked_from") == sid, f"fork: {f['session']}")
    fm = strip_system(await history(c, fid, "fork history"))
    expect([(m["role"], m["content"]) for m in fm] == [(m["role"], m["content"]) for m in rest[:2]],
           f"fork at the first reply holds {[(m['role'], m['content'][:20]) for m in fm]}")
    # the fork continues from the cached state of its messages
    res = await c.chat(fid, texts[1], max_tokens=12, sampling=GREEDY)
    st = check_stream(res, 12, "chat in fork", fid)
    expect(st["reused_tokens"] > 0, f"chat in a fork reused nothing: {st}")
    expect(res.text == results[1].text, f"the fork's second turn {res.text!r} != the original's "
                                        f"{results[1].text!r} (greedy, same history)")
    # names: two sessions with one name are ambiguous
    a = await new_session(c, name="twin")
    b = await new_session(c, name="twin")
    expect_error(await c.request("session.get", session="twin"), "ambiguous", "session.get of name 'twin' x2")
    await c.call("session.delete", session=a)
    expect((await c.call("session.get", session="twin"))["session"]["id"] == b, "after deleting one twin")
    await c.call("session.delete", session=b)
    await c.call("session.delete", session=fid)
    expect_error(await c.request("session.get", session=fid), "no_session", "session.get after delete")
    expect_error(await c.request("session.delete", session=fid), "no_session", "session.delete twice")
    ids = [x["id"] for x in (await c.call("session.list"))["sessions"]]
    expect(fid not in ids and sid in ids, f"session.list after delete: {ids}")


@check("context_full: a message longer than the context", timeout=60)
async def t_context_full(env):
    c = await env.connect()
    sid = await new_session(c)
    n_ctx = env.model_info["n_ctx"]
    text = "apple " * (n_ctx + 100)   # one token per word at least
    res = await c.chat(sid, text, max_tokens=4, sampling=GREEDY, timeout=50)
    expect(res.error is not None and res.start is None, f"a {n_ctx + 100}-word message: {res.describe()}")
    expect_error(res.error, "context_full", f"a {n_ctx + 100}-word message (n_ctx {n_ctx})")
    s = (await c.call("session.get", session=sid))["session"]
    expect(s["generating"] is False, "session generating after context_full")
    res = await c.chat(sid, "Hi.", max_tokens=4, sampling=GREEDY)
    check_stream(res, 4, "chat after context_full", sid)


@check("context overflow: old turns leave the context with room to spare, so the next turns do not re-read it",
       timeout=240)
async def t_overflow(env):
    n_ctx, mt = 512, 24
    d = env.new_daemon("overflow")
    d.ctx = n_ctx
    await d.start()
    c = await env.connect(d)
    sid = await new_session(c, name="long", system=SYSTEM)
    stats, texts = [], []
    for i in range(16):
        text = f"Question {i + 1}: name one animal that lives in a forest and one that lives in the sea."
        env.step = f"turn {i + 1}"
        res = await c.chat(sid, text, max_tokens=mt, sampling=GREEDY, timeout=60)
        s = check_stream(res, mt, f"turn {i + 1}", sid)
        expect(res.done["stop"] in ("eos", "length"), f"turn {i + 1}: stop {res.done['stop']}")
        expect(s["context_max"] == n_ctx, f"turn {i + 1}: context_max {s['context_max']} != --ctx {n_ctx}")
        stats.append(s)
        texts.append(text)
    drops = [i for i, s in enumerate(stats) if s["history_dropped"] > 0]
    env.note("overflow: " + ", ".join(f"{i + 1}:{s['history_dropped']}/{s['prefilled_tokens']}/{s['context_used']}"
                                      for i, s in enumerate(stats)) + " (turn:dropped/prefilled/used)")
    expect(drops, f"16 turns never overflowed a context of {n_ctx}: {[s['context_used'] for s in stats]}")
    for i in drops:
        s = stats[i]
        # the system prompt's state is kept: what follows the dropped turns is read again, not the whole prompt
        expect(s["reused_tokens"] > 0, f"turn {i + 1} dropped history and reused nothing: {s}")
        # a quarter of the context is left free after an overflow
        expect(s["prompt_tokens"] + mt <= n_ctx - n_ctx // 4,
               f"turn {i + 1}: after dropping {s['history_dropped']} messages the prompt has {s['prompt_tokens']} "
               f"tokens, + {mt} for the reply > 3/4 of {n_ctx}")
        if i + 1 < len(stats):
            n = stats[i + 1]
            expect(n["history_dropped"] == 0, f"turn {i + 2} dropped history again right after turn {i + 1}: "
                                              f"{[(j + 1, stats[j]['history_dropped']) for j in drops]}")
            expect(n["prefilled_tokens"] <= len(texts[i + 1].encode()) + 24,
                   f"turn {i + 2} prefilled {n['prefilled_tokens']} tokens after an overflow at turn {i + 1}")
    msgs = await history(c, sid)
    expect(msgs[0]["role"] == "system" and msgs[0]["in_context"], f"the system prompt left the context: {msgs[0]}")
    rest = strip_system(msgs)
    expect(len(rest) == 32, f"{len(rest)} messages in the transcript after 16 turns")
    flags = [m["in_context"] for m in rest]
    expect(not flags[0] and flags[-1] and flags == sorted(flags),
           f"in_context is not a run of dropped messages then kept ones: {flags}")
    await c.close()
    rc = await d.stop(30)
    expect(rc == 0, f"exit status after SIGTERM: {rc}")


@check("a long prompt reports its prefill progress before the first token", timeout=180)
async def t_prefill_progress(env):
    c = await env.connect()
    sid = await new_session(c)
    words = ["river", "mountain", "lamp", "orange", "engine", "violin", "harbour", "pepper"]
    text = "Summarise this list. " + " ".join(f"Item {i} is a {words[i % 8]}." for i in range(250))
    res = await c.chat(sid, text, max_tokens=2, sampling=GREEDY, timeout=170)
    s = check_stream(res, 2, "a long prompt", sid)   # checks the prefill events' order and numbers
    pre = [o for o in res.events if o.get("event") == "prefill"]
    expect(s["prefilled_tokens"] >= 1500, f"the long prompt is only {s['prefilled_tokens']} tokens")
    secs = s["prefill_ms"] / 1000
    # at most one event per 250 ms; at least one when the prefill took well over that
    expect(len(pre) <= secs / 0.25 + 1, f"{len(pre)} prefill events in {secs:.2f} s of prefill")
    expect(secs < 0.75 or len(pre) >= 1, f"no prefill event in {secs:.2f} s of prefill")
    env.note(f"a {s['prefilled_tokens']}-token prompt: {len(pre)} prefill events in {secs:.2f} s, "
             f"done {[o['done'] for o in pre][:8]}")


@check("two sessions generating at once give their solo greedy texts", timeout=120)
async def t_two_sessions(env):
    pa, pb, mt = "Write a short poem about the sea.", "Explain what a computer is.", 24
    c = await env.connect()
    solo = []
    for p in (pa, pb):
        sid = await new_session(c)
        res = await c.chat(sid, p, max_tokens=mt, sampling=GREEDY)
        check_stream(res, mt, f"solo {p!r}", sid)
        solo.append(res)
    ca, cb = await env.connect(), await env.connect()
    sa, sb = await new_session(ca), await new_session(cb)
    ra, rb = await asyncio.gather(ca.chat_send(sa, pa, mt, GREEDY), cb.chat_send(sb, pb, mt, GREEDY))
    await asyncio.gather(ca.chat_collect(ra, 90), cb.chat_collect(rb, 90))
    for res, so, sid, name in ((ra, solo[0], sa, "A"), (rb, solo[1], sb, "B")):
        check_stream(res, mt, f"concurrent {name}", sid)
        expect(res.text == so.text, f"concurrent {name}: {res.text!r} != solo {so.text!r}")
        expect(res.done["stop"] == so.done["stop"], f"concurrent {name}: stop {res.done['stop']} != solo "
                                                    f"{so.done['stop']}")
    if len(ra.tokens) >= 6 and len(rb.tokens) >= 6:
        lo = max(ra.token_times[0], rb.token_times[0])
        hi = min(ra.token_times[-1], rb.token_times[-1])
        expect(lo < hi, f"the two streams did not interleave: A's tokens {ra.token_times[0]:.3f}.."
                        f"{ra.token_times[-1]:.3f}, B's {rb.token_times[0]:.3f}..{rb.token_times[-1]:.3f}")
    else:
        env.note("two sessions: a reply was too short to check interleaving")


@check("chat.cancel mid-stream", timeout=90)
async def t_cancel(env):
    c = await env.connect()
    sid = await new_session(c)
    res = await c.chat_send(sid, LONG_PROMPT, max_tokens=300, sampling=GREEDY)
    await wait_first_token(c, res)
    cid = await c.send({"op": "chat.cancel", "session": sid})
    cr = await c.next(cid, 20)
    expect(cr.get("ok") is True and cr.get("cancelled") is True, f"chat.cancel during a stream: {cr}")
    await c.chat_collect(res, 30)
    check_stream(res, 300, "cancelled stream", sid)
    expect(res.done["stop"] == "cancelled", f"stop {res.done['stop']!r} after chat.cancel")
    expect(res.done["stats"]["generated_tokens"] < 300, "cancel did not stop the generation")
    msgs = strip_system(await history(c, sid))
    expect([m["role"] for m in msgs] == ["user", "assistant"], f"history roles {[m['role'] for m in msgs]}")
    a = msgs[-1]
    expect(a["id"] == res.done["message"], f"done.message {res.done['message']} != stored reply id {a['id']}")
    expect(a["truncated"] is True, f"cancelled reply stored with truncated {a['truncated']}")
    expect(a["content"] == res.text, f"stored partial reply {a['content']!r} != streamed {res.text!r}")
    cr = await c.call("chat.cancel", session=sid)
    expect(cr.get("cancelled") is False, f"chat.cancel of an idle session: {cr}")
    res2 = await c.chat(sid, "Thanks.", max_tokens=4, sampling=GREEDY)
    s = check_stream(res2, 4, "chat after a cancel", sid)
    expect(s["reused_tokens"] > 0, f"the turn after a cancel reused nothing: {s}")


@check("busy: chat.send / session.delete on a generating session", timeout=90)
async def t_busy(env):
    c1, c2 = await env.connect(), await env.connect()
    sid = await new_session(c1)
    res = await c1.chat_send(sid, LONG_PROMPT, max_tokens=300, sampling=GREEDY)
    await wait_first_token(c1, res)
    r = await c2.request("chat.send", session=sid, text="Hello?", max_tokens=4)
    expect_error(r, "busy", "chat.send from another connection while generating")
    r2 = await c1.chat_send(sid, "Hello again?", max_tokens=4)
    e = await c1.next(r2.id, 20)
    expect_error(e, "busy", "a second chat.send on the same connection while generating")
    c1.forget(r2.id)
    r = await c2.request("session.delete", session=sid)
    expect_error(r, "busy", "session.delete while generating")
    s = (await c2.call("session.get", session=sid))["session"]
    expect(s["generating"] is True, f"session.get while generating: generating {s['generating']}")
    st = await c2.call("daemon.stats")
    expect(st["generating"] >= 1, f"daemon.stats while generating: generating {st['generating']}")
    cr = await c2.call("chat.cancel", session=sid)
    expect(cr.get("cancelled") is True, f"chat.cancel from another connection: {cr}")
    await c1.chat_collect(res, 30)
    expect(res.done is not None and res.done["stop"] == "cancelled", f"stream after cancel: {res.describe()}")
    res3 = await c2.chat(sid, "Hello?", max_tokens=4, sampling=GREEDY)
    check_stream(res3, 4, "chat.send after the busy session finished", sid)


@check("client disconnect mid-stream cancels and stores the partial reply", timeout=90)
async def t_disconnect(env):
    c1, c2 = await env.connect(), await env.connect()
    sid = await new_session(c1)
    res = await c1.chat_send(sid, LONG_PROMPT, max_tokens=300, sampling=GREEDY)
    await wait_first_token(c1, res)
    c1.abort()
    await wait_idle(c2, sid)
    await wait_no_generation(c2)
    msgs = strip_system(await history(c2, sid))
    expect([m["role"] for m in msgs] == ["user", "assistant"], f"history roles {[m['role'] for m in msgs]}")
    a = msgs[-1]
    expect(a["truncated"] is True, f"reply of a vanished client stored with truncated {a['truncated']}")
    expect(a["content"].startswith(res.text), f"stored reply {a['content'][:80]!r} does not start with the "
                                              f"streamed {res.text!r}")
    expect(len(a["content"]) < 4000, "the reply ran on to a long length after the disconnect")
    res2 = await c2.chat(sid, "Thanks.", max_tokens=4, sampling=GREEDY)
    check_stream(res2, 4, "chat after a disconnect", sid)


@check("restart continuity: SIGTERM exits 0, the next turn reuses the stored cache", timeout=150)
async def t_restart(env):
    d = env.new_daemon("restart")
    await d.start()
    c = await env.connect(d)
    sid = await new_session(c, name="persist", system=SYSTEM)
    t1, t2 = "What is the capital of France?", "And what is the capital of Spain?"
    r1 = await c.chat(sid, t1, max_tokens=12, sampling=GREEDY)
    p = check_stream(r1, 12, "turn 1", sid)
    h1 = await history(c, sid)
    await c.close()
    rc = await d.stop(30)
    expect(rc == 0, f"dsachatd exit status after SIGTERM: {rc} (log: {d.log_tail()})")

    await d.start()
    c = await env.connect(d)
    h2 = await history(c, sid, "history after restart")
    key = lambda m: (m["id"], m["role"], m["content"], m["truncated"])  # noqa: E731
    expect([key(m) for m in h2] == [key(m) for m in h1],
           f"history changed over a restart: {[key(m) for m in h1]} -> {[key(m) for m in h2]}")
    r2 = await c.chat(sid, t2, max_tokens=12, sampling=GREEDY)
    s = check_stream(r2, 12, "turn 2 after restart", sid)
    expect(s["rebuilt"] is False, f"cache rebuilt after a clean restart: {s}")
    expect(s["reused_tokens"] >= p["prompt_tokens"] + p["generated_tokens"] - 1,
           f"after restart reused_tokens {s['reused_tokens']} < previous prompt {p['prompt_tokens']} + generated "
           f"{p['generated_tokens']} - 1: history re-prefilled")
    expect(s["prefilled_tokens"] <= len(t2.encode()) + 24,
           f"after restart prefilled {s['prefilled_tokens']} tokens for a {len(t2)}-byte message")
    await c.close()
    rc = await d.stop(30)
    expect(rc == 0, f"exit status of the restarted daemon after SIGTERM: {rc}")

    # the restored state gives the uninterrupted run's text (same history, greedy) on the shared daemon
    m = await env.connect()
    sid2 = await new_session(m, system=SYSTEM)
    u1 = await m.chat(sid2, t1, max_tokens=12, sampling=GREEDY)
    expect(u1.text == r1.text, f"turn 1 differs between daemons: {u1.text!r} vs {r1.text!r}")
    u2 = await m.chat(sid2, t2, max_tokens=12, sampling=GREEDY)
    expect(u2.text == r2.text, f"turn 2 after a restart {r2.text!r} != uninterrupted {u2.text!r}")


@check("SIGTERM during a generation: stream ends, exit 0, committed turns survive", timeout=150)
async def t_sigterm_mid(env):
    d = env.new_daemon("sigterm")
    await d.start()
    c = await env.connect(d)
    sid = await new_session(c, name="interrupted")
    r1 = await c.chat(sid, "What is the capital of France?", max_tokens=8, sampling=GREEDY)
    check_stream(r1, 8, "turn 1", sid)
    h1 = await history(c, sid)
    res = await c.chat_send(sid, LONG_PROMPT, max_tokens=400, sampling=GREEDY)
    await wait_first_token(c, res)
    d.signal(signal.SIGTERM)
    await c.chat_collect(res, 60)
    if res.done is not None:
        expect(res.done["stop"] == "shutdown", f"done after SIGTERM has stop {res.done['stop']!r}")
        expect(res.done["stats"]["generated_tokens"] < 400, "the generation ran to its limit after SIGTERM")
    else:
        expect(res.closed, f"stream after SIGTERM: {res.describe()}")
    rc = await d.wait(60)
    expect(rc == 0, f"dsachatd exit status after SIGTERM mid-generation: {rc} (log: {d.log_tail()})")
    await c.close()

    await d.start()
    c = await env.connect(d)
    h2 = await history(c, sid, "history after restart")
    key = lambda m: (m["id"], m["role"], m["content"])  # noqa: E731
    expect([key(m) for m in h2[:len(h1)]] == [key(m) for m in h1],
           f"committed turn lost or changed: {[key(m) for m in h1]} -> {[key(m) for m in h2]}")
    extra = h2[len(h1):]
    expect(len(extra) <= 2, f"unexpected messages after restart: {[key(m) for m in extra]}")
    if extra:
        expect(extra[0]["role"] == "user" and extra[0]["content"] == LONG_PROMPT,
               f"in-flight turn stored as {key(extra[0])}")
    if len(extra) == 2:
        a = extra[1]
        expect(a["role"] == "assistant" and a["truncated"] is True,
               f"in-flight reply stored as role {a['role']} truncated {a['truncated']}")
        expect(a["content"].startswith(res.text) or res.text.startswith(a["content"]),
               f"stored in-flight reply {a['content'][:80]!r} vs streamed {res.text[:80]!r}")
        if res.done is not None:
            expect(a["id"] == res.done["message"] and a["content"] == res.text,
                   f"reply reported by done ({res.done['message']}, {res.text!r}) stored as "
                   f"({a['id']}, {a['content']!r})")
    elif res.done is not None:
        raise CheckFailed(f"done (stop shutdown, message {res.done['message']}) but the reply is not stored")
    env.note(f"SIGTERM mid-stream: {'done stop shutdown' if res.done else 'connection closed'} after "
             f"{len(res.tokens)} tokens; after restart {len(extra)} in-flight message(s) stored"
             f"{' (reply truncated)' if len(extra) == 2 else ''}")
    r3 = await c.chat(sid, "Thanks.", max_tokens=4, sampling=GREEDY)
    s = check_stream(r3, 4, "chat after restart", sid)
    expect(s["reused_tokens"] > 0, f"the turn after the restart reused nothing: {s}")
    await c.close()
    rc = await d.stop(30)
    expect(rc == 0, f"exit status of the restarted daemon: {rc}")


@check("64 concurrent clients, one session and one chat each", timeout=300)
async def t_64_clients(env):
    n = 64
    clients = await asyncio.gather(*(env.connect(name=f"c{i}") for i in range(n)))
    sids = await asyncio.gather(*(new_session(c, name=f"c64-{i}") for i, c in enumerate(clients)))
    probe = await env.connect()
    st = await probe.call("daemon.stats")
    expect(st["clients"] >= n + 1, f"daemon.stats.clients {st['clients']} with {n + 1} connections open")
    t0 = time.monotonic()
    results = await asyncio.gather(*(c.chat_send(sids[i], f"Say the number {i}.", 4, GREEDY, req_id=f"client-{i}")
                                     for i, c in enumerate(clients)))
    await asyncio.gather(*(c.chat_collect(r, 280) for c, r in zip(clients, results)))
    elapsed = time.monotonic() - t0
    for i, (c, res) in enumerate(zip(clients, results)):
        check_stream(res, 4, f"client {i}", sids[i])
        for _, obj in c.received:
            expect(obj.get("id") in (f"client-{i}",) or not obj.get("event"),
                   f"client {i} received another client's event: {obj}")
    bad = [i for i, r in enumerate(results) if r.done["stop"] not in ("eos", "length")]
    expect(not bad, f"clients {bad} ended with stop {[results[i].done['stop'] for i in bad]}")
    env.note(f"64 clients: all done in {elapsed:.1f} s")


@check("a generating client that does not read does not hold up another client", timeout=90)
async def t_stalled_reader(env):
    other = await env.connect()
    sid_other, sid = await new_session(other), await new_session(other)
    await other.chat(sid_other, "Hi.", max_tokens=2, sampling=GREEDY)   # warm
    rss0 = env.daemon.rss_kib()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(env.daemon.socket)
        s.sendall(json.dumps({"op": "chat.send", "id": "slow", "session": sid, "text": LONG_PROMPT,
                              "max_tokens": 2000, "sampling": GREEDY}).encode() + b"\n")
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        res = await other.chat(sid_other, "What is two plus two?", max_tokens=8, sampling=GREEDY, timeout=60)
        check_stream(res, 8, "chat beside a client that does not read", sid_other)
        st = await other.call("daemon.stats")
        expect(st["generating"] >= 1, f"the unread chat is not generating: daemon.stats {st}")
        rss1 = env.daemon.rss_kib()
        cr = await other.call("chat.cancel", session=sid)
        expect(cr.get("cancelled") is True, f"chat.cancel of the unread chat: {cr}")
        # now read: start, tokens, done (cancelled), in order
        s.settimeout(30)
        buf = b""
        while not buf.endswith(b"\n") or b'"event":"done"' not in buf.rsplit(b"\n", 2)[-2]:
            chunk = s.recv(1 << 16)
            expect(chunk, f"connection closed before done: {buf[-300:]!r}")
            buf += chunk
        evs = [json.loads(x) for x in buf.splitlines() if x.strip()]
        kinds = [e.get("event") for e in evs]
        expect(kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"prefill", "token"},
               f"events of the unread chat: {kinds[:4]}...{kinds[-3:]}")
        expect(all(e.get("id") == "slow" for e in evs), "events of the unread chat with other ids")
        expect(evs[-1]["stop"] == "cancelled", f"the unread chat ended with {evs[-1]['stop']}")
        grow = ((rss1 or 0) - (rss0 or 0)) / 1024
        expect(grow < 64, f"daemon RSS grew by {grow:.1f} MiB beside a client that did not read")
        env.note(f"unread chat: {len(evs) - 2} tokens streamed before its cancel; the other chat took "
                 f"{time.monotonic() - t0:.1f} s")
    finally:
        s.close()


@check("backpressure: pipelined requests of a client that never reads: the daemon stops reading, RSS bounded, "
       "all answered in order once it reads", timeout=150)
async def t_backpressure(env):
    other = await env.connect()
    sid_other = await new_session(other)
    await other.chat(sid_other, "Hi.", max_tokens=2, sampling=GREEDY)   # warm
    sid = await new_session(other)
    rss0 = env.daemon.rss_kib()
    loop = asyncio.get_running_loop()

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await _backpressure(env, other, sid_other, sid, rss0, s)
    finally:
        s.close()


async def flood_until_stalled(env, s, first_line, cap, t_limit=60, rss_kib=None):
    """Send first_line, then model.info requests with ids 0, 1, ... on the non-blocking socket s (reading
    nothing) until the daemon stops taking them (no progress for 2 s) or cap bytes went out.  Returns (flood, sent,
    stalled, rss_max)."""
    lines = [first_line]
    size, i = len(first_line), 0
    while size < cap:
        ln = b'{"op":"model.info","id":%d}\n' % i
        lines.append(ln)
        size += len(ln)
        i += 1
    flood = b"".join(lines)
    sent, idle_since, rss_max = 0, None, 0
    t_end = time.monotonic() + t_limit
    while sent < len(flood) and time.monotonic() < t_end:
        try:
            k = s.send(flood[sent:sent + 65536])
            sent += k
            idle_since = None
        except BlockingIOError:
            if idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 2.0:
                break
            await asyncio.sleep(0.02)
        except OSError as e:
            raise CheckFailed(f"the daemon closed the connection of a client that does not read, after {sent} "
                              f"bytes of requests ({e})")
        if rss_kib:
            rss_max = max(rss_max, rss_kib() or 0)
    return flood, sent, sent < len(flood), rss_max


async def _backpressure(env, other, sid_other, sid, rss0, s):
    loop = asyncio.get_running_loop()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(env.daemon.socket)
    s.setblocking(False)
    chat_line = json.dumps({"op": "chat.send", "id": "stalled-chat", "session": sid, "text": LONG_PROMPT,
                            "max_tokens": 128, "sampling": GREEDY}).encode() + b"\n"
    flood, sent, stalled, rss_max = await flood_until_stalled(env, s, chat_line, 4 << 20,
                                                              rss_kib=env.daemon.rss_kib)
    rss_max = max(rss0, rss_max)
    # complete the line we are in the middle of, so every request we count is whole
    nl = flood.find(b"\n", sent - 1) + 1 if sent else 0
    n_sent_requests = flood[:nl].count(b"\n") - 1  # the model.info requests (the chat.send is the first line)

    # while it stalls, another client chats and the daemon answers
    res = await other.chat(sid_other, "What is two plus two?", max_tokens=8, sampling=GREEDY, timeout=60)
    check_stream(res, 8, "chat beside a stalled client", sid_other)
    st = await other.call("daemon.stats")
    for _ in range(10):
        rss_max = max(rss_max, env.daemon.rss_kib() or 0)
        await asyncio.sleep(0.1)
    grow = (rss_max - rss0) / 1024
    expect(stalled, f"the daemon read all {sent} bytes ({n_sent_requests} requests) of a client that reads "
                    f"nothing (RSS +{grow:.1f} MiB): it did not stop reading")
    expect(grow < 64, f"daemon RSS grew by {grow:.1f} MiB (from {rss0} KiB) while a client did not read; it had "
                      f"taken {sent} bytes ({n_sent_requests} requests) before it stopped reading")

    # now read everything: every request answered, in order, and the stalled chat finishes
    # the rest of the line we were in goes out while we read: the daemon takes it only once we read our replies
    reader, writer = await asyncio.open_unix_connection(sock=s, limit=1 << 24)
    if nl > sent:
        writer.write(flood[sent:nl])
        drain_task = asyncio.ensure_future(writer.drain())
    chat_ev, next_info, bad = [], 0, None
    deadline = time.monotonic() + 90
    while next_info < n_sent_requests or not (chat_ev and chat_ev[-1].get("event") == "done"):
        expect(time.monotonic() < deadline, f"draining: {next_info}/{n_sent_requests} model.info replies, "
                                            f"{len(chat_ev)} chat events after 90 s")
        line = await asyncio.wait_for(reader.readline(), 60)
        expect(line, f"connection closed while draining ({next_info}/{n_sent_requests} replies)")
        obj = json.loads(line)
        if obj.get("id") == "stalled-chat":
            chat_ev.append(obj)
        elif obj.get("id") == next_info and obj.get("ok") is True:
            next_info += 1
        elif bad is None:
            bad = obj
    expect(bad is None, f"unexpected reply while draining (expected model.info id {next_info}): "
                        f"{json.dumps(bad)[:200]}")
    kinds = [e.get("event") for e in chat_ev]
    expect(kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) <= {"prefill", "token"},
           f"the stalled chat's events: {kinds[:5]}...{kinds[-3:]}")
    expect(chat_ev[-1]["stop"] in ("eos", "length"), f"the stalled chat ended with {chat_ev[-1]['stop']}")
    writer.close()
    env.note(f"backpressure: {n_sent_requests} requests ({sent} bytes) accepted before the daemon stopped "
             f"reading; RSS +{grow:.1f} MiB; generating={st['generating']} during the stall")


@check("SIGTERM while a client does not read: exit 0 within 30 s", timeout=120)
async def t_sigterm_stalled(env):
    d = env.new_daemon("sigterm-stalled")
    await d.start()
    c = await env.connect(d)
    sid = await new_session(c)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(d.socket)
        s.setblocking(False)
        chat_line = json.dumps({"op": "chat.send", "id": "stalled-chat", "session": sid, "text": LONG_PROMPT,
                                "max_tokens": 2000, "sampling": GREEDY}).encode() + b"\n"
        # about 20k model.info requests: their replies (~14 MB) are far more than the output queue holds
        _, sent, stalled, _ = await flood_until_stalled(env, s, chat_line, 600 << 10, t_limit=30)
        await asyncio.sleep(1)
        d.signal(signal.SIGTERM)
        rc = await d.wait(30)
        if rc is None:
            s.close()
            rc2 = await d.wait(15)
            raise CheckFailed(f"no exit within 30 s of SIGTERM while a connected client reads nothing ({sent} "
                              f"bytes of requests sent); after that client closed: "
                              f"{'still running' if rc2 is None else f'exit status {rc2}'}")
        expect(rc == 0, f"exit status {rc} after SIGTERM with a client that does not read")
    finally:
        s.close()
        if d.alive():
            d.kill()


@check("overloaded: the 257th connection gets overloaded and is closed", timeout=120)
async def t_overloaded(env):
    probe = await env.connect()
    deadline = time.monotonic() + 10
    while (await probe.call("daemon.stats"))["clients"] != 1:
        expect(time.monotonic() < deadline, "earlier connections still counted after 10 s")
        await asyncio.sleep(0.1)
    more = []
    for i in range(255):
        more.append(await env.connect())
    reps = await asyncio.gather(*(c.request("hello") for c in more))
    expect(all(r.get("ok") is True for r in reps), f"one of 256 connections was refused: "
                                                   f"{[r for r in reps if not r.get('ok')][:1]}")
    st = await probe.call("daemon.stats")
    expect(st["clients"] == 256, f"daemon.stats.clients {st['clients']} with 256 connections")
    extra = await Client.connect(env.daemon.socket)
    try:
        r = await extra.next_unrouted(10)
        expect_error(r, "overloaded", "the 257th connection")
        try:
            r2 = await extra.next_unrouted(10)
            raise CheckFailed(f"the 257th connection was not closed after overloaded: {r2}")
        except Closed:
            pass
    finally:
        await extra.close()
    await more.pop().close()
    deadline = time.monotonic() + 10
    while True:
        try:
            again = await Client.connect(env.daemon.socket)
            r = await again.request("hello", timeout=10)
            await again.close()
            if r.get("ok") is True:
                break
        except (Closed, OSError):
            pass
        expect(time.monotonic() < deadline, "no connection accepted again after one of 256 closed")
        await asyncio.sleep(0.1)


@check("SIGHUP reopens the log file", timeout=60)
async def t_sighup(env):
    d = env.new_daemon("sighup")
    log = os.path.join(os.path.dirname(d.socket), "d.log")
    d.extra = ["--log-file", log]
    await d.start()
    try:
        expect(os.path.isfile(log) and os.path.getsize(log) > 0, f"--log-file {log} not written")
        os.rename(log, log + ".1")
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not (os.path.isfile(log) and os.path.getsize(log) > 0):
            expect(time.monotonic() < deadline, "no new log file 10 s after SIGHUP")
            await asyncio.sleep(0.1)
        c = await env.connect(d)
        r = await c.request("hello")
        expect(r.get("ok") is True, f"hello after SIGHUP: {r}")
        await c.close()
        expect(d.alive(), "the daemon died on SIGHUP")
        rc = await d.stop(30)
        expect(rc == 0, f"exit status after SIGTERM: {rc}")
    finally:
        if d.alive():
            d.kill()


@check("peer credentials (SO_PEERCRED)")
async def t_peercred(env):
    return "skip", ("needs a second uid: " + ("running as root, could setuid, not attempted"
                                              if os.geteuid() == 0 else "not root, cannot connect as another uid"))


@check("daemon.shutdown: ok, then exit 0", timeout=60)
async def t_shutdown(env):
    c = await env.connect()
    r = await c.request("daemon.shutdown")
    expect(r.get("ok") is True, f"daemon.shutdown: {r}")
    rc = await env.daemon.wait(30)
    expect(rc == 0, f"exit status after daemon.shutdown: {rc} (log: {env.daemon.log_tail()})")
    try:
        c2 = await Client.connect(env.daemon.socket, timeout=2)
        r = await c2.request("hello", timeout=2)
        await c2.close()
        raise CheckFailed(f"a stopped daemon still answers: {r}")
    except (OSError, Closed, asyncio.TimeoutError):
        pass


# ---- main -------------------------------------------------------------------------------------------------------

async def run_check(env, name, fn, timeout):
    env.clients = []
    env.step = "start"
    t0 = time.monotonic()
    status, detail = "ok", ""
    try:
        r = await asyncio.wait_for(fn(env), timeout)
        if isinstance(r, tuple) and r[0] == "skip":
            status, detail = "skip", r[1]
        # hygiene: open connections have no stray replies (e.g. events after done) and no non-JSON lines
        for c in env.clients:
            expect(not c.violations, f"protocol violation on a connection: {c.violations[:2]}")
            if c.eof or c.writer.is_closing():
                continue
            await c.request("hello", timeout=10)
            expect(c.unrouted.empty(), f"unexpected extra replies: "
                                       f"{[json.dumps(o)[:150] for _, o in list(c.unrouted._queue)[:3]]}")
    except CheckFailed as e:
        status, detail = "FAIL", str(e)
    except DaemonError as e:
        status, detail = "FAIL", f"unexpected error reply: {json.dumps(e.reply)[:400]}"
    except asyncio.TimeoutError:
        status, detail = "FAIL", f"timed out (check limit {timeout} s; no reply or stream stalled; at: {env.step})"
    except Closed as e:
        status, detail = "FAIL", f"the daemon closed a connection unexpectedly: {e}"
    except Exception as e:  # noqa: BLE001 - report anything as a failure of this check
        status, detail = "FAIL", f"{type(e).__name__}: {e} | {traceback.format_exc(limit=3).strip()[-600:]}"
    finally:
        for c in env.clients:
            await c.close()
        env.clients = []
    dt = time.monotonic() - t0
    if status == "ok":
        print(f"ok   {name} ({dt:.1f} s)", flush=True)
    elif status == "skip":
        print(f"skip {name}: {detail}", flush=True)
    else:
        print(f"FAIL {name}: {detail}", flush=True)
    return status


async def main_async(args):
    env = Env(args)
    statuses = []
    try:
        try:
            await env.start_main()
        except Exception as e:  # noqa: BLE001
            print(f"FAIL starting dsachatd: {e}", flush=True)
            return 1, env
        for name, fn, timeout in CHECKS:
            if args.only and not any(o in name for o in args.only):
                continue
            if not env.daemon.alive():
                print(f"FAIL the shared daemon is gone (exit status {env.daemon.proc.returncode}); log: "
                      f"{env.daemon.log_tail()}", flush=True)
                statuses.append("FAIL")
                try:
                    await env.start_main()
                except Exception as e:  # noqa: BLE001
                    print(f"FAIL restarting dsachatd: {e}", flush=True)
                    return 1, env
            statuses.append(await run_check(env, name, fn, timeout))
        if env.daemon.alive():
            rc = await env.daemon.stop(30)
            if rc != 0:
                print(f"FAIL the shared daemon's exit status after SIGTERM: {rc}", flush=True)
                statuses.append("FAIL")
    finally:
        for d in env.daemons:
            if d.alive():
                d.kill()
    for n in env.notes:
        print(f"note: {n}")
    fails = statuses.count("FAIL")
    print(f"{len(statuses) - fails} of {len(statuses)} checks passed or skipped; {fails} failed", flush=True)
    return (1 if fails else 0), env


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsachatd", required=True, help="the daemon binary")
    ap.add_argument("--model", help="the model (default: $DSA_MODEL or the cached default model)")
    ap.add_argument("--threads", type=int, help="--threads for the daemon")
    ap.add_argument("--only", action="append", help="run only the checks whose name contains this (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    args.model = os.path.abspath(args.model or default_model_path())
    if not os.path.isfile(args.model):
        print(f"FAIL model not found: {args.model} (set DSA_MODEL or run scripts/fetch-model.sh): the model is part "
              f"of the test environment", flush=True)
        return 1
    if not os.access(args.dsachatd, os.X_OK):
        print(f"FAIL no executable dsachatd at {args.dsachatd}", flush=True)
        return 1
    t0 = time.monotonic()
    rc, env = asyncio.run(main_async(args))
    print(f"total {time.monotonic() - t0:.1f} s; temporary directory {env.root}"
          f"{' kept' if rc or args.keep else ' removed'}", flush=True)
    if not rc and not args.keep:
        shutil.rmtree(env.root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
