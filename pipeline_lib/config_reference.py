"""Markdown reference of every config section and field, generated from the pydantic models.

    python -m pipeline_lib.config_reference > docs/config.md      (or: plm config --reference)
"""
from __future__ import annotations

import re
import types
import typing
from typing import cast

from pydantic import BaseModel

from pipeline_lib.config import Config, EmbeddedSource, FastaSource, UnirefSource, _section_types

__all__ = ["config_reference"]


def _nested(annotation: object, in_list: bool = False) -> list[tuple[type[BaseModel], bool]]:
    """The config models inside ``annotation`` (through Optional, unions, Annotated and lists), and whether
    each sits in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, in_list)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _nested(args[0], in_list)
    if origin in (list, tuple, set, frozenset):
        return [m for a in args for m in _nested(a, True)]
    if origin in (typing.Union, types.UnionType):
        return [m for a in args for m in _nested(a, in_list)]
    return []


def _kind(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    return str(field.default) if field is not None and isinstance(field.default, str) else None


def _type_name(annotation: object) -> str:
    models = _nested(annotation)
    kinds = [k for m, _ in models if (k := _kind(m))]
    if len(models) > 1 and len(kinds) == len(models):  # a tagged union: name the kinds, sections follow
        alternatives = " | ".join(f"kind: {k}" for k in kinds)
        return f"list of ({alternatives})" if models[0][1] else alternatives
    text = str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return re.sub(r"\bpipeline_lib\.(\w+\.)*", "", text).replace("NoneType", "None")  # class names only


def _models(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    """``model``'s section and those of the models in its fields: ``a.b`` for a nested model, ``a.b[]`` for
    the items of a list, ``a.b[] (kind: x)`` for each alternative of a tagged union."""
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        found = _nested(field.annotation)
        for sub, in_list in found:
            title = key + ("[]" if in_list else "")
            if len(found) > 1 and (kind := _kind(sub)):
                title += f" (kind: {kind})"
            out += _models(sub, title)
    return out


def config_reference() -> str:
    sections: list[tuple[str, type[BaseModel]]] = [("", Config)]
    sources: tuple[tuple[str, type[BaseModel]], ...] = (("uniref", UnirefSource), ("fasta", FastaSource),
                                                         ("embedded", EmbeddedSource))
    for kind, source in sources:
        sections.append((f"source (kind: {kind})", source))
    for name, section in _section_types().items():
        sections += _models(section, name)
    for name in ("ingest", "cluster", "split", "shards", "lineage", "storage", "runner", "retention", "notify"):
        sections += _models(cast(type[BaseModel], Config.model_fields[name].annotation), name)
    lines = ["# Configuration reference", "",
             "Generated from the typed schema (`plm config --reference`). Unknown keys are errors.", ""]
    seen = set()
    for title, model in sections:
        if (title, model) in seen:
            continue
        seen.add((title, model))
        lines += [f"## `{title or 'top level'}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel) or (title == "" and name in _section_types()):
                default = "section below"
            else:
                default = "required" if field.is_required() else repr(value)
            if len(default) > 60:
                default = default[:57] + "..."
            kind = _type_name(field.annotation).replace("|", "\\|")  # a bare '|' would split the table cell
            text = (field.description or "").replace("|", "\\|")
            shown = default.replace("|", "\\|")
            lines.append(f"| `{name}` | `{kind}` | `{shown}` | {text} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
