"""A tiny asyncio client for dsachatd's socket protocol (newline-delimited JSON), plus a helper that runs a daemon.

Used by tests/daemon/test_daemon.py and bench/bench_daemon.py; stdlib only.

    c = await Client.connect(path)
    r = await c.request("hello", protocol=1)            # the reply with the same (auto) id
    s = await c.call("session.create", name="x")        # like request, but raises DaemonError on an error reply
    res = await c.chat(s["session"]["id"], "Hi", max_tokens=8, sampling={"temp": 0})
    print(res.text, res.done["stats"])

Routing: a reader task reads every line, parses it and hands it to the queue of its "id" (the request that was
sent with that id); lines with no id, or an id nobody waits for, go to `unrouted`.  Every line received is also
kept in `received` as (monotonic time, object).  A line that is not valid JSON is recorded in `violations`.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import time

DEFAULT_LIMIT = 64 << 20   # the longest line the client accepts from the daemon
AUTO = object()


def default_model_path():
    """$DSA_MODEL, else the cached default model (which may not exist)."""
    if os.environ.get("DSA_MODEL"):
        return os.environ["DSA_MODEL"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "dsachat", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def _key(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


class DaemonError(Exception):
    """An error reply: .code, .message, .reply."""

    def __init__(self, reply):
        err = reply.get("error") or {}
        self.code = err.get("code")
        self.message = err.get("message")
        self.reply = reply
        super().__init__(f"{self.code}: {self.message}")


class Closed(Exception):
    """The daemon closed the connection."""


class ChatResult:
    """What one chat.send produced: events in order, with the time each arrived."""

    def __init__(self, req_id, t_sent):
        self.id = req_id
        self.t_sent = t_sent
        self.events = []        # every object received for this id, in order
        self.times = []         # monotonic arrival time of each
        self.start = None
        self.tokens = []        # the "text" of each token event
        self.token_times = []
        self.done = None
        self.error = None       # the error reply, if the request failed before start
        self.closed = False     # the connection closed before done/error

    @property
    def text(self):
        return "".join(self.tokens)

    @property
    def finished(self):
        return self.done is not None or self.error is not None or self.closed

    def add(self, obj, t):
        self.events.append(obj)
        self.times.append(t)
        ev = obj.get("event")
        if ev == "start":
            self.start = obj
        elif ev == "token":
            self.tokens.append(obj.get("text"))
            self.token_times.append(t)
        elif ev == "done":
            self.done = obj
        elif "error" in obj:
            self.error = obj

    def describe(self):
        """A short summary for failure messages."""
        kinds = [o.get("event") or ("error" if "error" in o else "reply") for o in self.events]
        return (f"id={self.id!r} events={kinds[:6]}{'...' if len(kinds) > 6 else ''} n={len(kinds)} "
                f"text={self.text[:60]!r} done={json.dumps(self.done)[:300] if self.done else None} "
                f"error={self.error} closed={self.closed}")


class Client:
    def __init__(self, reader, writer, name=""):
        self.reader = reader
        self.writer = writer
        self.name = name
        self._next_id = 1
        self._queues = {}
        self.unrouted = asyncio.Queue()
        self.received = []
        self.violations = []
        self.eof = False
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(cls, path, name="", limit=DEFAULT_LIMIT, timeout=10):
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=limit), timeout)
        return cls(reader, writer, name)

    # ---- reading ----------------------------------------------------------------------------------------------

    async def _read_loop(self):
        try:
            while True:
                try:
                    line = await self.reader.readline()
                except (ValueError, asyncio.LimitOverrunError) as e:   # a line over our limit
                    self.violations.append(f"line over the client's limit: {e}")
                    break
                except (ConnectionError, OSError):
                    break
                if not line:
                    break
                t = time.monotonic()
                if not line.endswith(b"\n"):
                    self.violations.append(f"last line without newline: {line[:200]!r}")
                try:
                    obj = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, ValueError) as e:
                    self.violations.append(f"daemon sent a line that is not JSON ({e}): {line[:200]!r}")
                    continue
                if not isinstance(obj, dict):
                    self.violations.append(f"daemon sent a non-object: {line[:200]!r}")
                    continue
                self.received.append((t, obj))
                q = self._queues.get(_key(obj["id"])) if "id" in obj else None
                (q or self.unrouted).put_nowait((t, obj))
        finally:
            self.eof = True
            for q in list(self._queues.values()) + [self.unrouted]:
                q.put_nowait((time.monotonic(), None))

    async def _get(self, q, timeout):
        if self.eof and q.empty():
            raise Closed("connection closed by the daemon")
        t, obj = await asyncio.wait_for(q.get(), timeout)
        if obj is None:
            q.put_nowait((t, None))   # keep the EOF mark for the next reader
            raise Closed("connection closed by the daemon")
        return t, obj

    async def next(self, req_id, timeout=30):
        """The next object carrying req_id (raises Closed, asyncio.TimeoutError)."""
        return (await self._get(self._queue(req_id), timeout))[1]

    async def next_timed(self, req_id, timeout=30):
        return await self._get(self._queue(req_id), timeout)

    async def next_unrouted(self, timeout=30):
        return (await self._get(self.unrouted, timeout))[1]

    def _queue(self, req_id):
        k = _key(req_id)
        if k not in self._queues:
            self._queues[k] = asyncio.Queue()
        return self._queues[k]

    def forget(self, req_id):
        self._queues.pop(_key(req_id), None)

    # ---- writing ----------------------------------------------------------------------------------------------

    def new_id(self):
        i = self._next_id
        self._next_id += 1
        return i

    async def send(self, obj, req_id=AUTO):
        """Send one request; an "id" is added (auto-numbered) unless obj has one or req_id is None.  Returns the id
        (None when the request has none).  Replies with that id are queued from now on."""
        obj = dict(obj)
        if "id" not in obj and req_id is not None:
            obj["id"] = self.new_id() if req_id is AUTO else req_id
        rid = obj.get("id")
        if "id" in obj:
            self._queue(rid)
        await self.send_raw((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
        return rid

    async def send_raw(self, data):
        self.writer.write(data)
        await self.writer.drain()

    async def request(self, op, timeout=30, **params):
        """Send {"op": op, **params} and return its (first) reply, error or not."""
        rid = await self.send(dict(op=op, **params))
        try:
            return await self.next(rid, timeout)
        finally:
            self.forget(rid)

    async def call(self, op, timeout=30, **params):
        """request(), raising DaemonError on an error reply."""
        r = await self.request(op, timeout, **params)
        if "error" in r:
            raise DaemonError(r)
        return r

    # ---- chat -------------------------------------------------------------------------------------------------

    async def chat_send(self, session, text, max_tokens=None, sampling=None, req_id=AUTO, **extra):
        """Send a chat.send; returns a ChatResult to fill with chat_collect()."""
        req = {"op": "chat.send", "session": session, "text": text}
        if max_tokens is not None:
            req["max_tokens"] = max_tokens
        if sampling is not None:
            req["sampling"] = sampling
        req.update(extra)
        if req_id is not AUTO:
            req["id"] = req_id
        t = time.monotonic()
        rid = await self.send(req)
        return ChatResult(rid, t)

    async def chat_next(self, res, timeout=60):
        """Read the next event of res into it; returns the object (None when the connection closed)."""
        try:
            t, obj = await self.next_timed(res.id, timeout)
        except Closed:
            res.closed = True
            return None
        res.add(obj, t)
        return obj

    async def chat_collect(self, res, timeout=120, on_event=None):
        """Read res's events until done, an error reply or EOF; timeout is for the whole stream."""
        deadline = time.monotonic() + timeout
        while not res.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"chat {res.id!r} not finished after {timeout} s: {res.describe()}")
            obj = await self.chat_next(res, left)
            if obj is not None and on_event:
                r = on_event(obj)
                if asyncio.iscoroutine(r):
                    await r
        self.forget(res.id)
        return res

    async def chat(self, session, text, max_tokens=None, sampling=None, timeout=120, on_event=None, **extra):
        res = await self.chat_send(session, text, max_tokens, sampling, **extra)
        return await self.chat_collect(res, timeout, on_event)

    # ---- closing ----------------------------------------------------------------------------------------------

    async def close(self):
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    def abort(self):
        """Close the socket at once (no flush), as a client that dies would."""
        self.writer.transport.abort()


# ---- running a daemon -------------------------------------------------------------------------------------------

class Daemon:
    """One dsachatd process on a given socket and store; its stderr goes to log_path."""

    def __init__(self, binary, socket_path, store, model=None, threads=None, ctx=None, extra=(), log_path=None):
        self.binary = binary
        self.socket = socket_path
        self.store = store
        self.model = model
        self.threads = threads
        self.ctx = ctx
        self.extra = list(extra)
        self.log_path = log_path or os.path.join(os.path.dirname(socket_path), "dsachatd.log")
        self.proc = None
        self._log = None

    def argv(self):
        a = [self.binary, "--foreground", "--socket", self.socket, "--store", self.store]
        if self.model:
            a += ["--model", self.model]
        if self.threads:
            a += ["--threads", str(self.threads)]
        if self.ctx:
            a += ["--ctx", str(self.ctx)]
        return a + self.extra

    async def start(self, timeout=120):
        """Start it and wait until the socket accepts a connection."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dsachatd exited with {self.proc.returncode} before listening; "
                                   f"log tail: {self.log_tail()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.socket)
                s.close()
                return self
            except OSError:
                s.close()
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"dsachatd not accepting on {self.socket} after {timeout} s; "
                                   f"log tail: {self.log_tail()}")
            await asyncio.sleep(0.05)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def rss_kib(self):
        """VmRSS of the daemon in KiB (None when gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    async def wait(self, timeout=60):
        """The exit status, or None if still running after timeout."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit status (SIGKILL after timeout, then returns None)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = await self.wait(timeout)
        if rc is None:
            self.kill()
        self._close_log()
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close_log()

    def _close_log(self):
        if self._log:
            self._log.close()
            self._log = None

    def log_tail(self, n=1500):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace").strip().replace("\n", " | ")
        except OSError:
            return "(no log)"
