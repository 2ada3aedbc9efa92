"""Rendering a GGUF's chat template: untrusted code, run in a bounded jinja2 sandbox.

A chat template comes from whatever GGUF a volunteer loaded, so it is code nobody reviewed.
jinja2's `ImmutableSandboxedEnvironment` already refuses attribute tricks (`__class__`, `mro`) and
mutation of the values it is given; it does not bound time or memory. This module adds, for one
render:

- time: a trace function (`sys.settrace`, this thread only, the caller's own tracer restored
  after) checks a deadline every few hundred Python line events of the compiled template, so a
  template that loops for ever (nested `range`s, loops without output) stops with
  `TemplateRefused` instead of hanging the worker;
- memory: the operations that can build a huge value in one step (`*`, `**`, `+`, `%`, string
  joins and `~`, captured blocks, filters and methods given a big number like
  `center(10**9)` or a format width) are checked before they run, and the output is read as it
  is generated and cut at `MAX_RENDER_CHARS`.

On top it provides what Hugging Face's own template renderer gives templates (what GGUF
templates are written against): `raise_exception`, `strftime_now`, a `tojson` that does not
HTML-escape and takes `indent`/`ensure_ascii`/`separators`/`sort_keys`, and the loop-control
extension (`{% break %}`).
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

# A rendered prompt is tokenized and must fit a context of a few thousand tokens: a million
# characters is far past any real prompt and still small in memory.
MAX_RENDER_CHARS = 1_000_000
# Real templates render in milliseconds; a second is a generous bound for slow machines.
RENDER_DEADLINE_S = 1.0
# The largest number a filter or method may be given (a width, a repeat count).
MAX_ARGUMENT = 100_000
_CHECK_EVERY = 256  # line events between two looks at the clock
_WIDTH = re.compile(r"%[-+ #0]*(\d+)|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")


class TemplateRefused(ValueError):
    """The template raised, or broke one of the bounds above; the message says which."""


class _Deadline(BaseException):
    """Raised from the trace function: a BaseException, so no `except Exception` inside jinja2
    can swallow it."""


def _too_big(value: object) -> bool:
    return isinstance(value, str | list | tuple | dict) and len(value) > MAX_RENDER_CHARS


def _check_numbers(args: Iterable[object]) -> None:
    """No repeat count or width over MAX_ARGUMENT among a call's arguments."""
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_ARGUMENT:
            raise TemplateRefused(f"the template passed {a} to a function (limit {MAX_ARGUMENT})")


def _check_format(text: object) -> None:
    """No width over MAX_ARGUMENT in a format string (`%09999999d`, `{:>9999999}`)."""
    if isinstance(text, str) and any(
        int(m.group(1) or m.group(2)) > MAX_ARGUMENT for m in _WIDTH.finditer(text)
    ):
        raise TemplateRefused("the template formats with a width over the limit")


def _bounded_join(join: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(join)
    def bounded(parts: Iterable[Any], *rest: Any) -> str:
        items = list(parts)
        if sum(len(str(p)) for p in items) > MAX_RENDER_CHARS:
            raise TemplateRefused(f"the template built a string over {MAX_RENDER_CHARS} chars")
        return join(items, *rest)

    return bounded


def _bounded_filter(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """*fn* checked before it runs: its arguments after the filtered value (the messages'
    text is not the template's to be refused for), and the format string of `format`."""

    @functools.wraps(fn)  # keeps jinja's pass_context/pass_environment marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_numbers([*args[1:], *kwargs.values()])
        if name == "format" and args:
            _check_format(args[0])
        result = fn(*args, **kwargs)
        if _too_big(result):
            raise TemplateRefused(f"a filter made a value over {MAX_RENDER_CHARS} items")
        return result

    return bounded


def tojson(
    value: Any,
    indent: int | None = None,
    ensure_ascii: bool = False,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's `tojson`: plain JSON, no HTML escaping (jinja2's own escapes `<`)."""
    if indent is not None and not 0 <= indent <= 16:
        raise TemplateRefused("tojson: indent from 0 to 16")
    return json.dumps(
        value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys
    )


def raise_exception(message: str) -> Any:
    raise TemplateRefused(str(message)[:500])


def strftime_now(fmt: str) -> str:
    if not isinstance(fmt, str) or len(fmt) > 100:
        raise TemplateRefused("strftime_now: a format string of at most 100 characters")
    return datetime.datetime.now().strftime(fmt)


def _environment() -> Any:
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        intercepted_binops = frozenset({"*", "**", "+", "%"})
        concat = staticmethod(_bounded_join("".join))

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
                    if sized and len(seq) * n > MAX_RENDER_CHARS:
                        raise TemplateRefused("the template repeats a value too often")
            elif operator == "**":
                if isinstance(right, int | float) and abs(right) > 64:
                    raise TemplateRefused("the template raises to a power over 64")
            elif operator == "+":
                sequences = (str, list, tuple)
                sized = isinstance(left, sequences) and isinstance(right, sequences)
                if sized and len(left) + len(right) > MAX_RENDER_CHARS:
                    raise TemplateRefused("the template built a value too long")
            elif operator == "%" and isinstance(left, str):
                _check_format(left)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
            _check_numbers([*args, *kwargs.values()])
            if getattr(__obj, "__name__", "") in ("format", "format_map"):  # "{:>9999999}"
                bound = getattr(__obj, "__wrapped__", __obj)  # jinja2 wraps str.format
                _check_format(getattr(bound, "__self__", ""))
            result = super().call(__context, __obj, *args, **kwargs)
            if _too_big(result):
                raise TemplateRefused(f"a call made a value over {MAX_RENDER_CHARS} items")
            return result

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters = {name: _bounded_filter(f, name) for name, f in env.filters.items()}
    env.filters["tojson"] = _bounded_filter(tojson, "tojson")
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env


@functools.lru_cache(maxsize=16)
def _compiled(template: str) -> Any:
    """The template compiled once per text (a node serves a handful of models)."""
    compiled = _environment().from_string(template)
    namespace = compiled.root_render_func.__globals__  # the compiled module's own globals
    for join in ("str_join", "markup_join"):  # what `~` compiles to
        if join in namespace:
            namespace[join] = _bounded_join(namespace[join])
    return compiled


def render_template(template: str, **variables: Any) -> str:
    """*template* rendered with *variables*, within the bounds above; TemplateRefused (with the
    reason) when it cannot be parsed, raises, or breaks a bound."""
    deadline = time.monotonic() + RENDER_DEADLINE_S
    events = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal events
        events += 1
        if events % _CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise _Deadline
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        compiled = _compiled(template)
        pieces: list[str] = []
        size = 0
        for piece in compiled.generate(**variables):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateRefused(f"the template's output is over {MAX_RENDER_CHARS} chars")
            pieces.append(piece)
        return "".join(pieces)
    except _Deadline:
        raise TemplateRefused(f"the template ran for over {RENDER_DEADLINE_S:g} s") from None
    except TemplateRefused:
        raise
    except RecursionError:
        raise TemplateRefused("the template recursed too deeply") from None
    except Exception as exc:  # a syntax error, a sandbox refusal, a type error in the template
        raise TemplateRefused(f"{type(exc).__name__}: {str(exc)[:300]}") from None
    finally:
        sys.settrace(previous)
