"""Is a topic's new JSON Schema an additive change of the one published before it?

Additive: a new optional field, a new `$defs` entry, a new variant of a discriminated union (a new
event type), a bound loosened or an enum value added. Breaking: a field removed, retyped or made
required, a variant of a union removed, an enum value removed, a bound tightened, an object closed.
`breaking(old, new)` lists the breaking changes, each with the path where it is; empty means additive.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

#: Bounds that a new schema may loosen but never tighten: (keyword, the direction that tightens).
_UPPER = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


def breaking(old: Schema, new: Schema) -> list[str]:
    problems: list[str] = []
    _compare(old, new, old, new, "$", problems, set())
    return problems


def _resolve(node: Any, root: Schema) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are supported: {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        extra = {key: value for key, value in node.items() if key != "$ref"}
        node = {**target, **extra}
    return node


def _types(node: Schema) -> set[str]:
    if "type" in node:
        kinds = node["type"]
        return {kinds} if isinstance(kinds, str) else set(kinds)
    if "const" in node:
        return {type(node["const"]).__name__}
    return set()


def _variants(node: Schema, root: Schema) -> dict[str, Any] | None:
    """The options of an anyOf/oneOf, named by discriminator value, `$ref` target or type."""
    options = node.get("oneOf") or node.get("anyOf")
    if options is None:
        return None
    named = {}
    mapping = {ref: name for name, ref in node.get("discriminator", {}).get("mapping", {}).items()}
    for option in options:
        if "$ref" in option:
            name = mapping.get(option["$ref"], option["$ref"])
        else:
            name = ",".join(sorted(_types(option))) or repr(sorted(option))
        named[name] = option
    return named


def _compare(old: Any, new: Any, old_root: Schema, new_root: Schema, path: str, problems: list[str],
             seen: set[tuple[int, int]]) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            problems.append(f"{path}: changed from {old!r} to {new!r}")
        return
    if (id(old), id(new)) in seen:  # a recursive definition compared already
        return
    seen.add((id(old), id(new)))
    old_variants, new_variants = _variants(old, old_root), _variants(new, new_root)
    if old_variants is not None or new_variants is not None:
        if old_variants is None or new_variants is None:
            problems.append(f"{path}: retyped (a union on one side only)")
            return
        for name, option in old_variants.items():
            if name not in new_variants:
                problems.append(f"{path}: variant {name} removed")
            else:
                _compare(option, new_variants[name], old_root, new_root, f"{path}|{name}", problems, seen)
        if "discriminator" not in new:
            problems += [f"{path}: variant {name} added to a union without a discriminator"
                         for name in new_variants if name not in old_variants]
        return
    if _types(old) != _types(new):
        problems.append(f"{path}: retyped from {sorted(_types(old))} to {sorted(_types(new))}")
        return
    if "const" in old and old.get("const") != new.get("const"):
        problems.append(f"{path}: constant {old['const']!r} changed to {new.get('const')!r}")
    if "enum" in old:
        removed = [value for value in old["enum"] if value not in new.get("enum", old["enum"])]
        if removed:
            problems.append(f"{path}: enum values removed: {removed}")
    for keyword in _UPPER + _LOWER:
        before, after = old.get(keyword), new.get(keyword)
        if after is None:
            continue
        if before is None or (after < before if keyword in _UPPER else after > before):
            problems.append(f"{path}: {keyword} tightened from {before} to {after}")
    if "pattern" in new and new.get("pattern") != old.get("pattern"):
        problems.append(f"{path}: pattern changed from {old.get('pattern')!r} to {new['pattern']!r}")
    if old.get("additionalProperties", True) is not False and new.get("additionalProperties") is False:
        problems.append(f"{path}: closed to unknown fields")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, field in old_props.items():
        if name not in new_props:
            problems.append(f"{path}.{name}: removed")
        else:
            _compare(field, new_props[name], old_root, new_root, f"{path}.{name}", problems, seen)
    newly_required = set(new.get("required", ())) - set(old.get("required", ()))
    problems += [f"{path}.{name}: made required" for name in sorted(newly_required)]
    for keyword in ("items", "additionalProperties"):
        if isinstance(old.get(keyword), dict) and isinstance(new.get(keyword), dict):
            _compare(old[keyword], new[keyword], old_root, new_root, f"{path}[{keyword}]", problems, seen)
