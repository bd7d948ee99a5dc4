#!/usr/bin/env python3
"""dsachatd end to end: tokens/s and time to first token through the socket, for 1, 4 and 16 concurrent sessions.

    bench/bench_daemon.py --dsachatd build-dev/dsachatd [--model FILE] [--threads N] [--clients 1,4,16]
                          [--max-tokens 64] [--json]

Starts a daemon on a temporary socket and store (removed afterwards), warms it up with one short chat, then for
each client count N: N connections each create a fresh session and, all at once, send the same fixed prompt
(chat.send, max_tokens 64, temp 0).  Per level it reports

  ttft_ms     time from sending chat.send to the first token event, as the client sees it (median and max)
  client_tok_s  each client's tokens / (done - first token), median
  total_tok_s   all generated tokens / (last done - first send): the daemon's aggregate decode throughput
  daemon_*    the daemon's own done.stats (ttft_ms, tok_s), medians, for comparison

and prints a table, or with --json one JSON object.  A benchmark, not a test: it never fails on timing (exit 1 only
when the daemon cannot be started or a chat fails).
"""

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "daemon"))
from dsachat_client import Client, Daemon, default_model_path  # noqa: E402

PROMPT = "Explain in a few sentences how a bicycle works."


def med(xs):
    return statistics.median(xs) if xs else None


async def one_level(sock, n, max_tokens):
    clients = await asyncio.gather(*(Client.connect(sock) for _ in range(n)))
    try:
        sids = []
        for c in clients:
            sids.append((await c.call("session.create", name="bench"))["session"]["id"])
        t0 = time.monotonic()
        sent = await asyncio.gather(*(c.chat_send(s, PROMPT, max_tokens, {"temp": 0})
                                      for c, s in zip(clients, sids)))
        await asyncio.gather(*(c.chat_collect(r, 600) for c, r in zip(clients, sent)))
        for r in sent:
            if r.done is None:
                raise RuntimeError(f"chat failed: {r.describe()}")
        t_end = max(r.times[-1] for r in sent)
        ttft = [(r.token_times[0] - r.t_sent) * 1000 for r in sent if r.token_times]
        ctok = [(len(r.token_times) - 1) / (r.token_times[-1] - r.token_times[0])
                for r in sent if len(r.token_times) > 1 and r.token_times[-1] > r.token_times[0]]
        gen = sum(r.done["stats"]["generated_tokens"] for r in sent)
        return {
            "clients": n,
            "generated_tokens": gen,
            "prompt_tokens": med([r.done["stats"]["prompt_tokens"] for r in sent]),
            "wall_s": round(t_end - t0, 3),
            "ttft_ms_median": round(med(ttft), 1) if ttft else None,
            "ttft_ms_max": round(max(ttft), 1) if ttft else None,
            "client_tok_s_median": round(med(ctok), 1) if ctok else None,
            "total_tok_s": round(gen / (t_end - t0), 1) if t_end > t0 else None,
            "daemon_ttft_ms_median": round(med([r.done["stats"]["ttft_ms"] for r in sent]), 1),
            "daemon_tok_s_median": round(med([r.done["stats"]["tok_s"] for r in sent]), 1),
            "stops": sorted({r.done["stop"] for r in sent}),
        }
    finally:
        for c in clients:
            await c.close()
        # the sessions stay in the temporary store; a fresh one per level would cost a model load each


async def run(args):
    root = tempfile.mkdtemp(prefix="dsachatd-bench-")
    d = Daemon(args.dsachatd, os.path.join(root, "s.sock"), os.path.join(root, "store"), model=args.model,
               threads=args.threads, log_path=os.path.join(root, "dsachatd.log"))
    try:
        await d.start()
        c = await Client.connect(d.socket)
        hello = await c.call("hello", protocol=1)
        sid = (await c.call("session.create", name="warm-up"))["session"]["id"]
        await c.chat(sid, "Hi.", max_tokens=4, sampling={"temp": 0})
        await c.close()
        levels = []
        for n in args.clients:
            levels.append(await one_level(d.socket, n, args.max_tokens))
            if not args.json:
                print(f"  ... {n} client(s) done", file=sys.stderr, flush=True)
        rc = await d.stop(30)
        return {
            "daemon": hello.get("daemon"), "backend": hello.get("backend"),
            "model": os.path.basename(hello.get("model", {}).get("path") or args.model or ""),
            "dsa": hello.get("model", {}).get("dsa"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": platform.processor()},
            "threads": args.threads, "prompt": PROMPT, "max_tokens": args.max_tokens,
            "levels": levels, "daemon_exit": rc,
        }
    finally:
        if d.alive():
            d.kill()
        log = d.log_tail(800)
        shutil.rmtree(root, ignore_errors=True)
        run.log = log


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsachatd", required=True)
    ap.add_argument("--model", help="default: $DSA_MODEL or the cached default model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels (default 1,4,16)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    args.model = os.path.abspath(args.model or default_model_path())
    args.dsachatd = os.path.abspath(args.dsachatd)
    args.clients = [int(x) for x in args.clients.split(",") if x]
    if not os.path.isfile(args.model):
        print(f"bench_daemon.py: model not found: {args.model}", file=sys.stderr)
        return 1
    try:
        res = asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001
        print(f"bench_daemon.py: {type(e).__name__}: {e}; daemon log: {getattr(run, 'log', '')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{res['daemon']} ({res['backend']}), {res['model']}, {res['machine']['cpus']} CPUs, "
          f"prompt {res['levels'][0]['prompt_tokens'] if res['levels'] else '?'} tokens, max_tokens "
          f"{res['max_tokens']}, temp 0")
    hdr = ("clients", "gen tok", "wall s", "TTFT ms med", "TTFT ms max", "client tok/s", "total tok/s",
           "daemon TTFT", "daemon tok/s")
    print("  ".join(f"{h:>12}" for h in hdr))
    for lv in res["levels"]:
        row = (lv["clients"], lv["generated_tokens"], lv["wall_s"], lv["ttft_ms_median"], lv["ttft_ms_max"],
               lv["client_tok_s_median"], lv["total_tok_s"], lv["daemon_ttft_ms_median"], lv["daemon_tok_s_median"])
        print("  ".join(f"{'-' if v is None else v:>12}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
