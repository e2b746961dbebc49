"""Is a topic's new JSON Schema an additive change of the one published before it?

Additive: a new optional field, a new `$defs` entry, a new variant of a discriminated union (a new
event type), a bound loosened or an enum value added. Breaking: a field removed, retyped, made required
or no longer required, a variant of a union removed, an enum value removed, a field newly held to an
enum or constant, a bound tightened, an object closed, and any change of a keyword this checker does not
reason about (`allOf`, `not`, `format`, `prefixItems`, `patternProperties` ...: reviewed by hand).
`breaking(old, new)` lists the breaking changes, each with the path where it is; empty means additive.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

#: Bounds that a new schema may loosen but never tighten: (keyword, the direction that tightens).
_UPPER = ("maxLength", "maxItems", "maxProperties", "maximum", "exclusiveMaximum")
_LOWER = ("minLength", "minItems", "minProperties", "minimum", "exclusiveMinimum")


#: Keywords compared by their meaning below; a change of any other is reported as it is.
_UNDERSTOOD = frozenset({
    "type", "const", "enum", "properties", "required", "items", "additionalProperties", "anyOf", "oneOf",
    "discriminator", "$ref", "$defs", "$schema", "$id", "title", "description", "default", "examples", "pattern",
    *_UPPER, *_LOWER,
})


def breaking(old: Schema, new: Schema) -> list[str]:
    problems: list[str] = []
    _compare(old, new, old, new, "$", problems, {})
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


def _variants(node: Schema) -> dict[str, Any] | None:
    """The options of an anyOf/oneOf, named by discriminator value or `$ref` target, or by their place
    and type when inline."""
    options = node.get("oneOf") or node.get("anyOf")
    if options is None:
        return None
    named = {}
    mapping = {ref: name for name, ref in node.get("discriminator", {}).get("mapping", {}).items()}
    for place, option in enumerate(options):
        if "$ref" in option:
            name = mapping.get(option["$ref"], option["$ref"])
        else:
            name = f"#{place}:" + (",".join(sorted(_types(option))) or "any")
        named[name] = option
    return named


def _compare(old: Any, new: Any, old_root: Schema, new_root: Schema, path: str, problems: list[str],
             seen: dict[tuple[int, int], tuple[Any, Any]]) -> None:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if not isinstance(old, dict) or not isinstance(new, dict):
        if old != new:
            problems.append(f"{path}: changed from {old!r} to {new!r}")
        return
    if (id(old), id(new)) in seen:  # a recursive definition compared already
        return
    seen[(id(old), id(new))] = (old, new)  # kept alive: a freed pair's ids would be taken for it
    if not _compare_unions(old, new, old_root, new_root, path, problems, seen):
        return
    if _types(old) != _types(new):
        problems.append(f"{path}: retyped from {sorted(_types(old))} to {sorted(_types(new))}")
        return
    if "const" in new and old.get("const") != new["const"]:
        problems.append(f"{path}: constant {old.get('const')!r} changed to {new['const']!r}")
    if "enum" in new:
        if "enum" not in old:
            problems.append(f"{path}: newly held to the values {new['enum']}")
        elif removed := [value for value in old["enum"] if value not in new["enum"]]:
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
    for keyword in sorted((set(old) | set(new)) - _UNDERSTOOD):
        if old.get(keyword) != new.get(keyword):
            problems.append(f"{path}: {keyword} changed from {old.get(keyword)!r} to {new.get(keyword)!r}")
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, field in old_props.items():
        if name not in new_props:
            problems.append(f"{path}.{name}: removed")
        else:
            _compare(field, new_props[name], old_root, new_root, f"{path}.{name}", problems, seen)
    old_required, new_required = set(old.get("required", ())), set(new.get("required", ()))
    problems += [f"{path}.{name}: made required" for name in sorted(new_required - old_required)]
    problems += [f"{path}.{name}: no longer required" for name in sorted(old_required - new_required)]
    for keyword in ("items", "additionalProperties"):
        if isinstance(old.get(keyword), dict) and isinstance(new.get(keyword), dict):
            _compare(old[keyword], new[keyword], old_root, new_root, f"{path}[{keyword}]", problems, seen)


def _compare_unions(old: Schema, new: Schema, old_root: Schema, new_root: Schema, path: str, problems: list[str],
                    seen: dict[tuple[int, int], tuple[Any, Any]]) -> bool:
    """Compare the unions of two nodes; False when the node is retyped (then nothing more is compared)."""
    old_variants, new_variants = _variants(old), _variants(new)
    if old_variants is None and new_variants is None:
        return True
    if old_variants is None or new_variants is None or ("oneOf" in old) != ("oneOf" in new):
        problems.append(f"{path}: retyped (its union changed kind, or is on one side only)")
        return False
    for name, option in old_variants.items():
        if name not in new_variants:
            problems.append(f"{path}: variant {name} removed")
        else:
            _compare(option, new_variants[name], old_root, new_root, f"{path}|{name}", problems, seen)
    if "discriminator" not in new:
        problems += [f"{path}: variant {name} added to a union without a discriminator"
                     for name in new_variants if name not in old_variants]
    return True
