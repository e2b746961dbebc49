"""Field and label selectors of list and watch requests, read as Kubernetes reads them.

Field selectors follow k8s.io/apimachinery's `fields.ParseSelector`: terms split on unescaped `,`,
each `field=value`, `field==value` or `field!=value`; in a value `\\`, `\\,` and `\\=` stand for the
character after the backslash. GuestInfos have no labels, so a label selector is parsed and then
either matches every object or none (`!key`, `key!=v` and `key notin (...)` hold for an object
without labels; `key`, `key=v`, `key in (...)`, `key>n` do not).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass


class SelectorError(ValueError):
    """A selector that cannot be read, or that names a field that cannot be selected on."""


@dataclass(frozen=True, slots=True)
class Term:
    field: str
    value: str
    equal: bool  # `=`/`==` when True, `!=` when False

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field, "") == self.value) == self.equal


#: Operators in the order Kubernetes tries them at each position.
_OPERATORS = ("!=", "==", "=")
_ESCAPABLE = ("\\", ",", "=")


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    escaped = False
    for char in selector:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return terms


def _unescape(value: str) -> str:
    out, escaped = [], False
    for char in value:
        if escaped:
            if char not in _ESCAPABLE:
                raise SelectorError(f"invalid field selector value {value!r}: invalid escape sequence \\{char}")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in (",", "="):
            raise SelectorError(f"invalid field selector value {value!r}: unescaped {char!r}")
        else:
            out.append(char)
    if escaped:
        raise SelectorError(f"invalid field selector value {value!r}: unterminated escape sequence")
    return "".join(out)


def _split_term(term: str) -> tuple[str, str, str] | None:
    escaped = False
    for index, char in enumerate(term):
        if escaped:
            escaped = False
            continue
        if char == "\\":
            escaped = True
            continue
        for operator in _OPERATORS:
            if term.startswith(operator, index):
                return term[:index], operator, term[index + len(operator):]
    return None


def parse_field_selector(selector: str, fields: frozenset[str] | set[str] | Mapping[str, object]) -> tuple[Term, ...]:
    """The terms of `selector`; a term naming a field not in `fields` is a `SelectorError`."""
    terms: list[Term] = []
    for part in _split_terms(selector):
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            raise SelectorError(f"invalid selector: '{selector}'; can't understand '{part}'")
        field, operator, value = split
        if field not in fields:
            raise SelectorError(f"field label not supported: {field}")
        unescaped = _unescape(value)
        if "\x00" in unescaped:
            raise SelectorError(f"invalid field selector value {value!r}: a NUL character")
        terms.append(Term(field, unescaped, operator != "!="))
    return tuple(terms)


def matches(terms: tuple[Term, ...], fields: Mapping[str, str]) -> bool:
    return all(term.matches(fields) for term in terms)


_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = rf"({_NAME}/)?{_NAME}"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = rf"\(\s*{_VALUE}(\s*,\s*{_VALUE})*\s*\)"
#: (pattern, whether an object without labels meets the requirement)
_REQUIREMENTS = (
    (re.compile(rf"!\s*{_KEY}"), True),
    (re.compile(rf"{_KEY}\s*!=\s*{_VALUE}"), True),
    (re.compile(rf"{_KEY}\s+notin\s*{_SET}"), True),
    (re.compile(rf"{_KEY}\s+in\s*{_SET}"), False),
    (re.compile(rf"{_KEY}\s*(==|=)\s*{_VALUE}"), False),
    (re.compile(rf"{_KEY}\s*(<|>)\s*-?[0-9]+"), False),
    (re.compile(_KEY), False),
)


def _split_requirements(selector: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def labels_select_unlabelled(selector: str) -> bool:
    """Whether `selector` matches an object with no labels (every GuestInfo); bad syntax is a `SelectorError`."""
    result = True
    if not selector.strip():
        return True
    for requirement in _split_requirements(selector):
        text = requirement.strip()
        for pattern, unlabelled in _REQUIREMENTS:
            if pattern.fullmatch(text):
                result = result and unlabelled
                break
        else:
            raise SelectorError(f"unable to parse requirement: {text!r} in label selector {selector!r}")
    return result
