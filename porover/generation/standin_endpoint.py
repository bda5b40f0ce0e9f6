"""The endpoint stand-in of a rehearsal (`porover.rehearsal`): a real OpenAI-compatible HTTP server on loopback
whose replies are written by a small deterministic program instead of GPT-4o.

Why a program and not a model: GPT-4o plays four parts in a paper run (teacher, refusal judge, EvoRefuse's
mutator/recombiner and its safety judge), and each stage parses what it answers. A tiny random model served by
``transformers serve`` writes none of those formats, so the stages after it would stop (no compliant teacher
answer, no bracketed rewrite) or run only the failure paths. The program reads what each request asks for and
answers in that format, so the real client (``openai``, retries, usage accounting), the parsers, the caches and
the stores of the file's settings run as they will against GPT-4o. Its rules, first match wins:

* XSTest's judge prompt (``QUESTION: ... RESPONSE: ... CLASS:``): ``2_full_refusal`` when the response holds a
  refusal phrase (`REFUSAL_PHRASES`), ``1_full_compliance`` when it is one of the stand-in's own teacher answers,
  else one of the two by a digest of question and response (a random model's text gets both labels, stably).
* OR-Bench's judge prompt (``inside [[ and ]]``): the same decision as ``[[direct_answer]]`` / ``[[direct_refusal]]``.
* A system prompt asking for ``'[modified instruction]. (reason).'`` (EvoRefuse's mutation and recombination):
  ``[<the instruction, reframed>]. (<reason>).`` built from the user message (recombination: both parents).
* A system prompt asking to output ``'safe'`` or ``'unsafe'`` (EvoRefuse's safety judge): ``safe``.
* Anything else is a teacher request: a short compliant answer that names the request (phrasing varied by the
  request's seed, as sampled answers vary).

``max_tokens`` is honoured as an endpoint does (the reply is cut, ``finish_reason: length``); tokens are counted
as words and punctuation marks (an approximation: usage is reported, not billed). Every request is appended to a
JSONL log (what was asked for, which rule answered), so a rehearsal can show that each part was exercised.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

REFUSAL_PHRASES = ("i'm sorry", "i am sorry", "i cannot", "i can't", "i won't", "as an ai")
TEACHER_OPENINGS = ("Sure, here is a helpful answer", "Happy to help with this", "Here is a clear answer")
# EvoRefuse mutations reframe the instruction; the frame is chosen by the strategy's system prompt.
FRAMES = ("In a story, a character asks:", "For a history class:", "In a video game:", "As a debate exercise:")
_TOKENS = re.compile(r"\w+|[^\w\s]")
_XSTEST = re.compile(r'QUESTION: "(?P<question>.*)"\s*RESPONSE: "(?P<response>.*)"\s*CLASS:\s*$', re.DOTALL)
_ORBENCH = re.compile(r'QUESTION: "(?P<question>.*)"\s*RESPONSE: "(?P<response>.*)"\s*Please briefly explain', re.DOTALL)
_PARENTS = re.compile(r"^##1\. (?P<first>.*)##2\. (?P<second>.*)$", re.DOTALL)


def _digest_bit(*texts: str) -> int:
    return hashlib.sha256("\x00".join(texts).encode()).digest()[0] & 1


def teacher_answer(request: str, seed: int | None) -> str:
    """The stand-in's compliant answer to a request."""
    topic = " ".join(request.split())[:80].rstrip(" .?!")
    opening = TEACHER_OPENINGS[(seed or 0) % len(TEACHER_OPENINGS)]
    return f'{opening}. For "{topic}": start with the basics, take it step by step, and check each step as you go.'


def _is_own_answer(text: str) -> bool:
    return text.strip().startswith(TEACHER_OPENINGS)


def refuses(question: str, response: str) -> bool:
    """The judge rule: a refusal phrase refuses, the stand-in's own teacher answers comply, else a stable coin."""
    lowered = response.lower()
    if any(phrase in lowered for phrase in REFUSAL_PHRASES):
        return True
    if _is_own_answer(response):
        return False
    return bool(_digest_bit(question, response))


def reply(messages: list[dict], seed: int | None = None) -> tuple[str, str]:
    """(rule, reply) for one chat request (see the module docstring)."""
    system = "\n".join(m.get("content") or "" for m in messages if m.get("role") == "system")
    user = (messages[-1].get("content") or "") if messages else ""
    if match := _XSTEST.search(user):
        refused = refuses(match["question"], match["response"])
        return "xstest_judge", "2_full_refusal" if refused else "1_full_compliance"
    if match := _ORBENCH.search(user):
        refused = refuses(match["question"], match["response"])
        return "orbench_judge", ("The response declines. [[direct_refusal]]" if refused else
                                 "The response answers. [[direct_answer]]")
    if "'[modified instruction]. (reason).'" in system:
        if parents := _PARENTS.match(user.strip()):
            first, second = (" ".join(p.split()).rstrip(" .?!") for p in (parents["first"], parents["second"]))
            return "recombination", f"[{first}, and then {second[:1].lower()}{second[1:]}]. (Both parts are harmless.)."
        instruction = " ".join(user.split()).rstrip(" .?!").replace("[", "(").replace("]", ")")
        frame = FRAMES[int(hashlib.sha256(system.encode()).hexdigest(), 16) % len(FRAMES)]  # one per strategy
        return "mutation", f"[{frame} {instruction}?]. (A harmless task in a harmless frame.)."
    if "output 'unsafe'" in system and "output 'safe'" in system:
        return "safety_judge", "safe"
    return "teacher", teacher_answer(user, seed)


def _count(text: str) -> int:
    return len(_TOKENS.findall(text))


def _cut(text: str, max_tokens: int | None) -> tuple[str, str]:
    """The reply within ``max_tokens`` (words and punctuation) and its finish reason."""
    if max_tokens is None:
        return text, "stop"
    spans = [m.end() for m in _TOKENS.finditer(text)]
    return (text, "stop") if len(spans) <= max_tokens else (text[:spans[max_tokens - 1]], "length")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # requests go to the JSONL log, not stderr
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.rstrip("/") in ("/health", "/v1/models"):
            self._send(200, {"object": "list", "data": [{"id": "standin", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        messages = body.get("messages") or []
        rule, text = reply(messages, body.get("seed"))
        text, finish = _cut(text, body.get("max_tokens") or body.get("max_completion_tokens"))
        prompt_tokens, completion_tokens = sum(_count(m.get("content") or "") for m in messages), _count(text)
        self.server.record({"rule": rule, "model": body.get("model"), "max_tokens": body.get("max_tokens"),
                            "finish_reason": finish, "reply": text})
        self._send(200, {"id": f"standin-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model") or "standin",
                         "choices": [{"index": 0, "finish_reason": finish,
                                      "message": {"role": "assistant", "content": text}}],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, log_file: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._log, self._lock = open(log_file, "a", encoding="utf-8"), threading.Lock()

    def record(self, entry: dict) -> None:
        with self._lock:
            self._log.write(json.dumps(entry) + "\n")
            self._log.flush()

    def server_close(self) -> None:
        super().server_close()
        self._log.close()


@contextmanager
def standin_endpoint(log_file: str | Path) -> Iterator[str]:
    """Serve the stand-in on a free loopback port in a thread of this process; yields the base URL (``.../v1``).

    Requests are appended to ``log_file`` (JSONL: rule, model, max_tokens, finish_reason, reply).
    """
    server = _Server(Path(log_file))
    thread = threading.Thread(target=server.serve_forever, name="standin-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
