"""Tools and environments for multi-turn rollouts: bounded tool calls and the built-in, network-free ones.

A tool call is bounded: a time limit and a size cap. Standalone python tools run in a forked process that is
killed at the time limit (a tool that loops forever cannot hold the rollout); environment methods must share
the environment's state, so they run in a daemon thread that is abandoned at the time limit. A result longer
than the size cap is cut to it. Each call gets a named outcome: ok | error | unknown-tool | timeout | too-large.
The text the model sees for an error is TRL 1.16's: `str({"error": str(e)})`.
"""

from __future__ import annotations

import ast
import multiprocessing
import operator
import random
import threading
import time

TOOL_TIME_LIMIT_S = 5.0
TOOL_SIZE_CAP = 4096          # characters of a tool result kept


def _run_forked(func, arguments: dict, time_limit: float):
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            send.send(("ok", func(**arguments)))
        except BaseException as exc:  # noqa: BLE001 - the tool's own failure is the outcome
            try:
                send.send(("error", str(exc)))
            except Exception:
                send.send(("error", type(exc).__name__))
        finally:
            send.close()

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    got = recv.poll(time_limit)
    if got:
        try:
            kind, value = recv.recv()
        except (EOFError, OSError):
            kind, value = "error", "the tool process ended without a result"
    proc.join(0.5 if got else 0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    recv.close()
    return ("timeout", None) if not got else (kind, value)


def _run_threaded(func, arguments: dict, time_limit: float):
    box: dict = {}

    def target():
        try:
            box["ok"] = func(**arguments)
        except BaseException as exc:  # noqa: BLE001
            box["error"] = str(exc)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(time_limit)
    if th.is_alive():
        return "timeout", None
    return ("ok", box["ok"]) if "ok" in box else ("error", box.get("error", ""))


def call_tool(tools: dict, name: str, arguments: dict, *, time_limit: float = TOOL_TIME_LIMIT_S,
              size_cap: int = TOOL_SIZE_CAP, in_process: bool = False) -> tuple[object, dict]:
    """Run one tool call. Returns (result as TRL puts it in the tool message's content, event).

    `in_process=True` (environment methods) runs in a thread instead of a forked process.
    """
    start = time.perf_counter()
    event = {"name": name, "arguments": arguments}
    if name not in tools:
        kind, value = "unknown-tool", f"Tool {name} not found."
    else:
        runner = _run_threaded if in_process else _run_forked
        try:
            kind, value = runner(tools[name], dict(arguments or {}), time_limit)
        except Exception as exc:  # e.g. the arguments or result could not cross the process boundary
            kind, value = "error", str(exc)
    event["seconds"] = round(time.perf_counter() - start, 4)
    if kind == "timeout":
        value = f"the tool ran past its time limit of {time_limit:g} s and was stopped"
    if kind != "ok":
        event.update(outcome=kind, error=value)
        return {"error": value}, event
    text = value if isinstance(value, list) else str(value)
    if isinstance(text, str) and len(text) > size_cap:
        event.update(outcome="too-large", size=len(text), kept=size_cap)
        return text[:size_cap], event
    event["outcome"] = "ok"
    return value, event


# ------------------------------------------------------------------------------------ built-in tools

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.USub: operator.neg,
        ast.UAdd: operator.pos}


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        right = _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_eval(node.left), right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError(f"unsupported expression element {type(node).__name__}")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: The arithmetic expression to evaluate, e.g. "3 * (4 + 5)".
    """
    value = _eval(ast.parse(str(expression), mode="eval"))
    return str(int(value) if isinstance(value, float) and value.is_integer() else value)


def failing_tool(query: str) -> str:
    """A tool that always raises (shows how a failing tool is recorded).

    Args:
        query: Any text.
    """
    raise RuntimeError(f"failing_tool cannot answer {query!r}")


def looping_tool(query: str) -> str:
    """A tool that never returns (shows the time limit).

    Args:
        query: Any text.
    """
    while True:
        time.sleep(0.01)


def huge_tool(query: str) -> str:
    """A tool that returns one megabyte (shows the size cap).

    Args:
        query: Any text.
    """
    return "x" * (1 << 20)


BUILTIN_TOOLS = {f.__name__: f for f in (calculator, failing_tool, looping_tool, huge_tool)}


# ------------------------------------------------------------------------------ built-in environments

class GuessEnv:
    """Guess a number from 1 to 10: `guess` answers higher / lower / correct; `get_reward` is 1 when found."""

    def __init__(self):
        self.target, self.found, self.guesses = 0, False, 0

    def reset(self, seed: int | None = None, **kwargs) -> str:
        self.target = random.Random(seed).randint(1, 10)
        self.found, self.guesses = False, 0
        return " I picked a number from 1 to 10; call guess to find it."

    def guess(self, number: int) -> str:
        """Guess the hidden number.

        Args:
            number: The guess, from 1 to 10.
        """
        self.guesses += 1
        n = int(number)
        self.found = self.found or n == self.target
        return "correct" if n == self.target else ("higher" if n < self.target else "lower")

    def get_reward(self) -> float:
        return 1.0 if self.found else 0.0


BUILTIN_ENVS = {"guess": GuessEnv}


class ScriptedReplies:
    """A scripted environment: answers each assistant turn with the next line of `replies` (cycling)."""

    def __init__(self, replies: list[str] | None = None):
        self.replies = list(replies or ["Are you sure? Check your answer once more.", "Now say it in one sentence."])
        self.turn = 0

    def reset(self, **kwargs) -> None:
        self.turn = 0

    def reply(self, assistant_text: str) -> str:
        text = self.replies[self.turn % len(self.replies)]
        self.turn += 1
        return text
