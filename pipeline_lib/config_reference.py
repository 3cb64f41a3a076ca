"""Markdown reference of every config section and field, generated from the pydantic models.

    python -m pipeline_lib.config_reference > docs/config.md      (or: plm config --reference)
"""
from __future__ import annotations

import re
import typing
from typing import cast

from pydantic import BaseModel

from pipeline_lib.config import Config, EmbeddedSource, FastaSource, UnirefSource, _section_types

__all__ = ["config_reference"]


def _type_name(annotation: object) -> str:
    text = str(annotation).replace("typing.", "")
    if isinstance(annotation, type):
        text = annotation.__name__
    return re.sub(r"\bpipeline_lib\.(\w+\.)*", "", text).replace("NoneType", "None")  # class names only


def _models(model: type[BaseModel], prefix: str) -> list[tuple[str, type[BaseModel]]]:
    out = [(prefix, model)]
    for name, field in model.model_fields.items():
        ann = field.annotation
        candidates = [ann, *typing.get_args(ann)]
        for c in candidates:
            if isinstance(c, type) and issubclass(c, BaseModel):
                out += _models(c, f"{prefix}.{name}" if prefix else name)
            for inner in typing.get_args(c):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out += _models(inner, f"{prefix}.{name}[]" if prefix else f"{name}[]")
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
            lines.append(f"| `{name}` | `{_type_name(field.annotation)}` | `{default}` | {field.description or ''} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference())
