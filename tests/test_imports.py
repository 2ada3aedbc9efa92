"""The dependency rules of the tree (docs/architecture.md), checked by walking every import.

Read from the source with `ast`, so a rule holds for imports inside functions too, and nothing is
imported to check it. A module's imports are its direct ones; the rules are written so that
direct imports suffice (a sans-IO module that imported a trio module would itself be named).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("crypto", "inference", "p2p")
OURS = (*PACKAGES, "tools", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> Iterator[str]:
    """Every module *module* imports, absolute (relative imports resolved)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            for alias in node.names:  # `from p2p import wire` imports the module p2p.wire
                if f"{target}.{alias.name}" in MODULES:
                    yield f"{target}.{alias.name}"


IMPORTS = {m: sorted(set(_imports(m))) for m in MODULES}


def _top(name: str) -> str:
    return name.split(".")[0]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _violations(rule: str, who: object, forbidden: object) -> list[str]:
    assert callable(who) and callable(forbidden)
    return [
        f"{m} imports {i} ({rule})"
        for m, imported in IMPORTS.items()
        if who(m)
        for i in imported
        if forbidden(i)
    ]


SANS_IO = (
    "p2p.protocol",
    "p2p.errors",
    # the DHT's rules, tested with plain calls
    "p2p.dht.records",
    "p2p.dht.record_store",
    "p2p.dht.record_bounds",
    "p2p.dht.fair_share",
    "p2p.dht.signer_history",
    "p2p.dht.address_cookies",
    "p2p.dht.answer_budget",
    "p2p.dht.identity_proof",
    "p2p.dht.rate_limit",
    "p2p.dht.record_entries",
    # the relay's and the reachability check's rules (p2p/reach/)
    "p2p.reach.relay_protocol",
    "p2p.reach.relay_table",
    "p2p.reach.reachability",
    "p2p.reach.strangers",
    "p2p.reach.punch_rules",
    "p2p.session.handshake_admission",
)
EVENT_LOOPS = ("trio", "asyncio", "trio_asyncio", "anyio")

RULES = {
    "crypto imports no other gpunet package": (
        lambda m: _within(m, "crypto"),
        lambda i: _top(i) in OURS and _top(i) != "crypto",
    ),
    "inference never imports p2p": (
        lambda m: _within(m, "inference"),
        lambda i: _top(i) in ("p2p", "tools", "tests"),
    ),
    "p2p never imports tools or tests": (
        lambda m: _within(m, "p2p"),
        lambda i: _top(i) in ("tools", "tests"),
    ),
    "the sans-IO protocol, record rules and error table import no event loop": (
        lambda m: any(_within(m, s) for s in SANS_IO),
        lambda i: _top(i) in EVENT_LOOPS,
    ),
    "only p2p.dht imports kademlia, rpcudp or asyncio": (
        lambda m: not _within(m, "p2p.dht"),
        lambda i: _top(i) in ("kademlia", "rpcudp", "asyncio", "trio_asyncio", "umsgpack"),
    ),
    "only p2p.api imports starlette or hypercorn": (
        lambda m: not _within(m, "p2p.api"),
        lambda i: _top(i) in ("starlette", "hypercorn"),
    ),
    "only p2p.cli imports click": (
        lambda m: not _within(m, "p2p.cli"),
        lambda i: _top(i) == "click",
    ),
    "the node runtime never imports the API": (
        lambda m: _within(m, "p2p.node"),
        lambda i: _within(i, "p2p.api") or _within(i, "p2p.cli"),
    ),
    "nothing below the CLI imports the CLI": (
        lambda m: not _within(m, "p2p.cli") and m != "p2p.__main__",
        lambda i: _within(i, "p2p.cli"),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_dependency_rule(rule: str) -> None:
    who, forbidden = RULES[rule]
    assert _violations(rule, who, forbidden) == []


def test_subpackage_inits_hold_only_a_docstring() -> None:
    """Importing one file of a subpackage must not drag in its neighbours (kademlia, llama.cpp,
    trio): an `__init__.py` maps its files to their roles and imports nothing."""
    offenders = []
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if not isinstance(n, ast.Expr)]
        if body:
            offenders.append(module)
        if module.count(".") == 1 and not ast.get_docstring(tree):
            offenders.append(f"{module} (no docstring)")
    assert offenders == []


def _cycles() -> list[list[str]]:
    """Import cycles among our modules (Tarjan's strongly connected components)."""
    graph = {m: [i for i in IMPORTS[m] if i in MODULES and i != m] for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


MAX_LINES = 500


def test_no_file_over_the_size_bound() -> None:
    sources = [*MODULES.values(), *sorted((ROOT / "tools").glob("*.py"))]
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_the_rules_can_fail() -> None:
    """The walker sees imports: a known import is found, so an empty violation list means
    something."""
    assert "trio" in IMPORTS["p2p.node.runtime"]
    assert any(_within(i, "crypto") for i in IMPORTS["p2p.session.secure"])


# Settings come from flags, environment and config file in one place (p2p/settings.py, read by
# the CLI). The model cache path is the one exception: every node of a user shares that cache, and
# tests and tools that build a model reach it without a CLI.
ENVIRONMENT_READERS = {"inference.model_cache"}


def test_only_the_cli_reads_the_environment() -> None:
    readers = set()
    for module, path in MODULES.items():
        if _within(module, "p2p.cli") or module in ENVIRONMENT_READERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                readers.add(module)
    assert readers == set()
