"""Config text: YAML loading with a bound on alias expansion, ``--set KEY.PATH=VALUE`` overrides (list items
by index: ``cluster.levels.1.min_seq_id=0.3``), the overrides a deployment's runs may not be given, and the
bounded, redacted echo of values in error messages.

    raw = apply_overrides(read_yaml_mapping(...), ["cluster.threads=8", "cluster.levels.0.name=c95"], defaults)
"""
from __future__ import annotations

import copy
import reprlib
from pathlib import Path
from typing import Any

import yaml

from pipeline_lib.errors import ConfigError
from pipeline_lib.lineage import redact_secrets

__all__ = ["MAX_YAML_VALUES", "load_yaml", "apply_overrides", "unsafe_overrides", "short", "prune"]


# a config holds thousands of values at most (paths, accessions); YAML aliases can make a few hundred bytes
# stand for billions (each level of "a: &a [*b, *b, ...]" multiplies): refused past this many values
MAX_YAML_VALUES = 1_000_000


def load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` with the expanded size bounded: aliases share their node, but validation, hashing
    and messages walk every use of it."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # the parser's message quotes the text: credentials redacted
        raise ConfigError(f"{what}: not valid YAML: {redact_secrets(str(exc))}") from exc
    seen, stack = 0, [value]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ConfigError(f"{what}: more than {MAX_YAML_VALUES:,} values once its aliases are expanded; a "
                              "config is not that large (a YAML alias bomb?)")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return value


def _index(node: list[Any], part: str, item: str, where: str) -> int:
    if not part.lstrip("-").isdigit():
        raise ConfigError(f"override {short(item)}: {where} is a list: index it by number ({where}.0...)")
    i = int(part)
    if not -len(node) <= i < len(node):
        raise ConfigError(f"override {short(item)}: {where} has {len(node)} items; no index {i}")
    return i


def apply_overrides(raw: dict[str, Any], overrides: list[str],
                    defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a raw config mapping. A number indexes a list
    (``cluster.levels.1.min_seq_id=0.3``); a list the mapping does not hold yet starts from its value in
    ``defaults`` (the defaults' mapping)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {short(item)}: expected KEY.PATH=VALUE")
        key, _, text = item.partition("=")
        value = load_yaml(text, f"override {short(item)}")
        node: Any = raw
        default: Any = defaults
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[:i + 1])
            if isinstance(node, list):
                j = _index(node, part, item, ".".join(parts[:i]))
                node, default = node[j], None
            else:
                default = default.get(part) if isinstance(default, dict) else None
                nxt = node.get(part)
                if nxt is None:  # not in the file: a list starts from its default value, a section empty
                    nxt = node[part] = copy.deepcopy(default) if isinstance(default, list) else {}
                node = nxt
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {short(item)}: {where} is not a section")
        if isinstance(node, list):
            node[_index(node, parts[-1], item, ".".join(parts[:-1]))] = value
        else:
            node[parts[-1]] = value
    return raw


def unsafe_overrides(overrides: list[str], workdir: Path) -> list[str]:
    """The overrides among ``overrides`` that name an executable (a key with ``binary`` in it) or a local path
    outside ``workdir`` (any string in the value that looks like a path: absolute, ``~``, or with a ``/`` and
    no ``://``), each with the reason. What a deployment's runs may not be given by whoever can start them
    through the Prefect API, unless the deployment allows it (docs/security.md)."""
    found = []
    root = workdir.resolve()
    for item in overrides:
        key, _, text = item.partition("=")
        if "binary" in key.lower():
            found.append(f"{key.strip()}: names an executable")
            continue
        try:
            value = load_yaml(text, f"override {short(item)}")
        except ConfigError:
            continue  # loading the config reports it
        stack, outside = [value], []
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend([*v.keys(), *v.values()])
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, str) and "://" not in v and (v.startswith(("/", "~")) or "/" in v):
                p = Path(v).expanduser()
                if not (p if p.is_absolute() else Path.cwd() / p).resolve().is_relative_to(root):
                    outside.append(v)
        if outside:
            found.append(f"{key.strip()}: path outside the workdir {root}: {short(outside[0])}")
    return found


def prune(value: Any, level: int = 3, items: int = 5) -> Any:
    """A copy of ``value`` with containers cut to ``items`` entries and ``level`` levels (strings whole, so that
    redaction still sees every credential): what an error message shows, bounded before it is redacted."""
    if isinstance(value, dict):
        return {k: prune(v, level - 1, items) for k, v in list(value.items())[:items]} if level else {...: ...}
    if isinstance(value, (list, tuple)):
        return [prune(v, level - 1, items) for v in value[:items]] if level else [...]
    return value


def short(value: Any) -> str:
    """A repr of ~100 characters at most, with URL credentials redacted: what an error message may echo of a
    value or an override. A hostile value (a YAML alias bomb) is pruned before it is redacted."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = 60
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 4
    r.maxlevel = 3
    return r.repr(redact_secrets(prune(value)))
