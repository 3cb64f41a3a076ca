"""Stage-scoped code versions: a stage's cache key covers the code that stage runs, and nothing else.

    from pipeline_lib.stage_code import stage_code, explain_rerun
    code = stage_code(compute)            # the stage's `compute` closure, defined inside its task function
    code.modules                          # {"pipeline_lib/sequences/cluster.py": "3f2a...", ...}
    explain_rerun(old_key_parts, new_key_parts)  # ["code of pipeline_lib/sequences/cluster.py changed", ...]

What a stage runs is found from the source, not from a list kept by hand: the top-level function of the task
module that defines ``compute``, the module-level functions, classes and constants it uses (of its own module or
imported from another task module; the Prefect plumbing of ``tasks.common`` and ``tasks.artifacts`` aside), then
every ``pipeline_lib`` module that code imports names from, followed transitively through their own imports (at
module level and inside functions). Each module counts by its syntax tree without docstrings, so comments, docstrings
and formatting change no key, and a package upgrade that leaves a stage's code alone keeps its cache.

Modules whose code cannot change what a stage writes are left out, and their imports are not followed:
configuration (its effect reaches the key as the stage's parameters, after validation; a value a config class
derives in a property must be put into the parameters by the task, as ``train`` does with ``column``), lineage,
progress reporting, locks, error messages, the cache machinery (``stage_cache``, this module), the dashboard and the
package ``__init__`` that holds the version string. A semantic change the syntax tree cannot see (a new MMseqs2
default, a changed reference file) is declared by bumping the stage's
number in :data:`STAGE_VERSIONS`.
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGE_VERSIONS", "CodeVersion", "stage_code", "module_closure", "explain_rerun"]

# Bump a stage's number for a change of its output that its code's syntax tree does not show.
STAGE_VERSIONS: dict[str, int] = {}

LIBRARY = "pipeline_lib"
TASKS = "tasks"
# the Prefect layer's plumbing (cache protocol, lineage hand-off, UI artifacts): not what a stage computes
TASK_PLUMBING = ("tasks.common", "tasks.artifacts")
# modules (and packages, with everything under them) that cannot change a stage's output bytes
NOT_OUTPUT_CODE = ("pipeline_lib.config", "pipeline_lib.config_ops", "pipeline_lib.config_reference",
                   "pipeline_lib.lineage", "pipeline_lib.progress", "pipeline_lib.locks", "pipeline_lib.dashboard",
                   "pipeline_lib.errors", "pipeline_lib.stage_cache", "pipeline_lib.stage_code")  # (the cache itself)
NOT_OUTPUT_SUFFIX = ".config"  # the per-stage config sections: pipeline_lib.train.config, ...
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class CodeVersion:
    """The code a stage runs: ``{source name: hash of its syntax tree}`` and the stage's declared version."""

    modules: dict[str, str]
    version: int = 1
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256(repr((self.version, sorted(self.modules.items()))).encode())
        object.__setattr__(self, "digest", h.hexdigest()[:16])

    def parts(self) -> dict[str, Any]:
        return {"version": self.version, "modules": dict(sorted(self.modules.items()))}


def _excluded(module: str) -> bool:
    return (module == LIBRARY or module.endswith(NOT_OUTPUT_SUFFIX)
            or any(module == m or module.startswith(m + ".") for m in NOT_OUTPUT_CODE))


def _source(module: str, root: Path) -> Path | None:
    """The file of a module under ``root`` (``pipeline_lib/x.py`` or ``pipeline_lib/x/__init__.py``)."""
    base = root.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1024)
def _parse(path: Path, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _tree(path: Path) -> ast.Module:
    st = path.stat()  # the file's identity: an edit during a long-lived process is seen
    return _parse(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1024)
def _module_facts(path: Path, mtime_ns: int, size: int, module: str, root: Path) -> tuple[str, frozenset[str]]:
    """(hash, imported library modules) of one module file: cached, as every stage call asks again."""
    tree = _parse(path, mtime_ns, size)
    return _hash(tree), frozenset(_imported(tree, _package_of(module, path), root))


def _strip_docstrings(node: ast.AST) -> ast.AST:
    """A copy of ``node`` without the docstrings of the module, classes and functions in it."""
    node = copy.deepcopy(node)
    for n in ast.walk(node):
        body = getattr(n, "body", None)
        if (isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            n.body = body[1:] or [ast.Pass()]
    return node


def _hash(node: ast.AST) -> str:
    return hashlib.sha256(ast.dump(_strip_docstrings(node), include_attributes=False).encode()).hexdigest()[:16]


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _imported(node: ast.AST, package: str, root: Path) -> set[str]:
    """The library modules that ``node`` imports from, anywhere inside it (relative imports resolved)."""
    found: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                base = ".".join(parts + ([n.module] if n.module else []))
            names = [base] + [f"{base}.{a.name}" for a in n.names]  # `from pkg import module` names a module
        else:
            continue
        found.update(m for m in names if m.split(".")[0] == LIBRARY and _source(m, root) is not None)
    return found


def module_closure(entries: set[str], root: Path = REPO) -> dict[str, str]:
    """``{relative path: hash}`` of the library modules ``entries`` import, transitively, less the excluded ones."""
    out: dict[str, str] = {}
    todo, seen = sorted(entries), set()
    while todo:
        module = todo.pop()
        if module in seen or _excluded(module):
            continue
        seen.add(module)
        path = _source(module, root)
        if path is None:
            continue
        st = path.stat()
        digest, imports = _module_facts(path, st.st_mtime_ns, st.st_size, module, root)
        out[path.relative_to(root).as_posix()] = digest
        todo.extend(sorted(imports - seen))
    return out


def _task_function(compute: Callable[..., Any]) -> tuple[str, str]:
    """(module, top-level function name) that defines ``compute`` (itself, when it is not a closure)."""
    fn = compute
    while True:  # functools.partial and decorators (functools.wraps) around the real function
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        else:
            break
    name = fn.__qualname__.split(".<locals>")[0].split(".")[0]
    if not name.isidentifier():  # a module-level lambda: nothing names the code it runs
        raise ValueError(f"{fn.__module__}.{fn.__qualname__}: a stage's compute must be a function defined inside "
                         "its task function (or a module-level function), so that its code can be found")
    return fn.__module__, name


def _module_defs(path: Path) -> dict[str, ast.AST]:
    """The module-level functions, classes and assigned names (constants) of a module, by name."""
    defs: dict[str, ast.AST] = {}
    for n in _tree(path).body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[n.name] = n
        elif isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            for t in targets:
                for name in (x.id for x in ast.walk(t) if isinstance(x, ast.Name)):
                    defs[name] = n
    return defs


def _origins(path: Path, root: Path) -> tuple[dict[str, tuple[str, str | None]], set[str]]:
    """Imported names of a module: ``{name: (module, attribute or None)}`` for library and task modules, and
    the library modules imported whole (``import pipeline_lib.x``: followed as they are, whatever is used)."""
    origin: dict[str, tuple[str, str | None]] = {}
    whole: set[str] = set()
    for n in _tree(path).body:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] in (LIBRARY, TASKS):
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                origin[a.asname or a.name] = (sub, None) if _source(sub, root) else (n.module, a.name)
        elif isinstance(n, ast.Import):
            whole |= {a.name for a in n.names if a.name.split(".")[0] == LIBRARY}
    return origin, whole


def _task_code(module: str, name: str, root: Path) -> tuple[dict[str, str], set[str]]:
    """The task function, and what it uses from the task modules (functions, classes, constants; in its own
    module or imported from another task module, except the plumbing in :data:`TASK_PLUMBING`), by hash; and
    the library modules their names come from."""
    code: dict[str, str] = {}
    entries: set[str] = set()
    todo: list[tuple[str, str]] = [(module, name)]
    while todo:
        mod, fname = todo.pop()
        path = _source(mod, root)
        if path is None:
            raise ValueError(f"no source for {mod} under {root}")
        defs = _module_defs(path)
        if fname not in defs:
            if (mod, fname) == (module, name):
                raise ValueError(f"{module}.{name}: not a module-level definition of {path}")
            continue
        label = f"{path.relative_to(root).as_posix()}:{fname}"
        if label in code:
            continue
        node = defs[fname]
        code[label] = _hash(node)
        origin, whole = _origins(path, root)
        entries |= whole | {m for m in _imported(node, _package_of(mod, path), root)}
        for used in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
            if used in origin:
                src, attr = origin[used]
                if src.split(".")[0] == LIBRARY:
                    entries.add(src)
                elif src not in TASK_PLUMBING and attr is not None:
                    todo.append((src, attr))
            elif used in defs and used != fname:
                todo.append((mod, used))
    return code, entries


def stage_code(compute: Callable[..., Any], stage: str | None = None, root: Path = REPO) -> CodeVersion:
    """The :class:`CodeVersion` of the stage whose ``compute`` this is (see the module docstring)."""
    module, name = _task_function(compute)
    code, entries = _task_code(module, name, root)
    return CodeVersion({**code, **module_closure(entries, root)}, STAGE_VERSIONS.get(stage or name, 1))


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def _differences(old: dict[str, Any], new: dict[str, Any], added: str, removed: str) -> list[tuple[str, str]]:
    """``(key, "changed" | added | removed)`` for every key whose hash differs between two name -> hash maps."""
    return [(k, "changed" if k in old and k in new else added if k in new else removed)
            for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def explain_rerun(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """Why a stage's key changed, in words, from the two steps' ``key_parts`` (params, inputs, code)."""
    if not before:
        return ["no earlier run of this stage recorded its key"]
    reasons = []
    old, new = _flat(before.get("params", {})), _flat(after.get("params", {}))
    for k in sorted(old.keys() | new.keys()):
        if old.get(k, "<unset>") != new.get(k, "<unset>"):
            reasons.append(f"parameter {k} changed ({old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r})")
    reasons += [f"input {k} {what}" for k, what in
                _differences(before.get("inputs", {}), after.get("inputs", {}), "added", "removed")]
    old_code, new_code = before.get("code", {}), after.get("code", {})
    if old_code.get("version") != new_code.get("version"):
        reasons.append(f"stage version changed ({old_code.get('version')} -> {new_code.get('version')})")
    reasons += [f"code of {k} {what}" for k, what in
                _differences(old_code.get("modules", {}), new_code.get("modules", {}), "now used", "no longer used")]
    return reasons or ["same key parts (the earlier result was removed or never finished)"]
