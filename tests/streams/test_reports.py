"""The join's msgspec report types (`streams.reports`) against the contract (`schemas.events`, pydantic).

Field by field: the same JSON names, types, bounds, defaults and unknown-key policy, read from both
sides by introspection, so that a field added or bounded in one and not the other fails here. Then by
behaviour: valid reports decode to the same content; hostile ones are refused by both.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
import msgspec.inspect as mi
import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas import events, kubevirt
from schemas.limits import MAX_ITEMS, MAX_STRING
from streams import reports

PAIRS = [
    (getattr(events, name, None) or getattr(kubevirt, name), getattr(reports, name))
    for name in ("VMIRef", "ReportOrder", "DomainInterface", "AccessCredentialNeeds", "DomainReport", "GuestOSInfo",
                 "GuestAgentCommandInfo", "GuestOSUser", "FileSystemDisk", "FileSystem", "GuestIPAddress",
                 "GuestInterface", "AgentVersionInfo", "GuestTimezone", "AgentReport")
]

Shape = tuple[Any, ...]

_BOUNDS = {annotated_types.MinLen: "min_length", annotated_types.MaxLen: "max_length", annotated_types.Ge: "ge",
           annotated_types.Le: "le", annotated_types.Gt: "gt", annotated_types.Lt: "lt"}


def _pydantic_bounds(metadata: list[Any]) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            bounds |= _pydantic_bounds(item.metadata)
        for kind, name in _BOUNDS.items():
            if isinstance(item, kind):
                bounds[name] = getattr(item, {"min_length": "min_length", "max_length": "max_length"}.get(name, name))
    return bounds


def pydantic_shape(annotation: Any, metadata: list[Any]) -> Shape:
    """A type as a comparable tuple: kind, its parts, and its bounds."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return pydantic_shape(base, [*extra, *metadata])
    bounds = tuple(sorted(_pydantic_bounds(metadata).items()))
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):  # a field's bounds apply to the members that are not None
        return ("union", frozenset(pydantic_shape(a, [] if a is type(None) else metadata)
                                   for a in get_args(annotation)))
    if origin is list:
        return ("list", pydantic_shape(get_args(annotation)[0], []), bounds)
    if origin is dict:
        key, value = get_args(annotation)
        return ("dict", pydantic_shape(key, []), pydantic_shape(value, []), bounds)
    if origin is Literal:
        return ("literal", frozenset(get_args(annotation)))
    if annotation is type(None):
        return ("none",)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("struct", annotation.__name__)
    return (annotation.__name__, bounds)


def msgspec_shape(t: mi.Type) -> Shape:
    def bounds(*names: str) -> tuple[tuple[str, Any], ...]:
        return tuple(sorted((n, getattr(t, n)) for n in names if getattr(t, n, None) is not None))

    if isinstance(t, mi.UnionType):
        return ("union", frozenset(msgspec_shape(m) for m in t.types))
    if isinstance(t, mi.ListType):
        return ("list", msgspec_shape(t.item_type), bounds("min_length", "max_length"))
    if isinstance(t, mi.DictType):
        return ("dict", msgspec_shape(t.key_type), msgspec_shape(t.value_type), bounds("min_length", "max_length"))
    if isinstance(t, mi.LiteralType):
        return ("literal", frozenset(t.values))
    if isinstance(t, mi.NoneType):
        return ("none",)
    if isinstance(t, mi.StructType):
        return ("struct", t.cls.__name__)
    names = {mi.StrType: "str", mi.IntType: "int", mi.FloatType: "float", mi.BoolType: "bool"}
    return (names[type(t)], bounds("min_length", "max_length", "ge", "le", "gt", "lt"))


def pydantic_fields(model: type[BaseModel]) -> dict[str, tuple[Shape, bool, Any]]:
    out = {}
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json", by_alias=True)
        out[field.alias or name] = (pydantic_shape(field.annotation, field.metadata), field.is_required(), default)
    return out


def msgspec_fields(struct: type[msgspec.Struct]) -> dict[str, tuple[Shape, bool, Any]]:
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    out = {}
    for field in info.fields:
        default = None
        if not field.required:
            default = field.default_factory() if field.default is msgspec.NODEFAULT else field.default
            default = msgspec.to_builtins(default)
        out[field.encode_name] = (msgspec_shape(field.type), field.required, default)
    return out


@pytest.mark.parametrize(("model", "struct"), PAIRS, ids=[model.__name__ for model, _ in PAIRS])
def test_the_struct_has_the_models_fields_types_bounds_and_defaults(
        model: type[BaseModel], struct: type[msgspec.Struct]) -> None:
    expected, actual = pydantic_fields(model), msgspec_fields(struct)
    assert list(actual) == list(expected), "the same JSON names, in the same order"
    for name in expected:
        assert actual[name] == expected[name], f"{model.__name__}.{name}"
    forbids = model.model_config.get("extra") == "forbid"
    assert struct.__struct_config__.forbid_unknown_fields == forbids, "the same policy for unknown keys"


TIMELINES = sorted((Path(__file__).parent / "data" / "timelines").glob("*.json"))


def timeline_reports() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for case in TIMELINES:
        for step in json.loads(case.read_text())["steps"]:
            for side in ("domain", "agent"):
                if side in step:
                    found.append((side, step[side]))
                if side in step.get("tick", {}):
                    found.append((side, step["tick"][side]))
    return found


SIDES = {"domain": (events.DomainReport, reports.DOMAIN_REPORTS),
         "agent": (events.AgentReport, reports.AGENT_REPORTS)}


@pytest.mark.parametrize(("side", "report"), timeline_reports())
def test_a_valid_report_decodes_to_the_same_content(side: str, report: dict[str, Any]) -> None:
    model, decoder = SIDES[side]
    wire = model.model_validate(report).model_dump_json(by_alias=True).encode()
    decoded = decoder.decode(wire)
    assert model.model_validate_json(msgspec.json.encode(decoded)) == model.model_validate_json(wire)


AGENT = {"vmi": {"namespace": "ns", "name": "vm", "uid": "u"}, "node": "n1", "observedAt": 10.5, "connected": True}
DOMAIN = {"vmi": {"namespace": "ns", "name": "vm", "uid": "u"}, "node": "n1", "observedAt": 10.5}
HOSTILE = {
    "hostname over the string bound": ("agent", {**AGENT, "hostname": "x" * (MAX_STRING + 1)}),
    "too many users": ("agent", {**AGENT, "users": [{"userName": "u"}] * (MAX_ITEMS + 1)}),
    "a user without a name": ("agent", {**AGENT, "users": [{"domain": "d"}]}),
    "login time beyond year 5000": ("agent", {**AGENT, "users": [{"userName": "u", "loginTime": 1e12}]}),
    "too many disks on a filesystem": ("agent", {**AGENT, "filesystems": [{"disk": [{}] * 65}]}),
    "negative used bytes": ("agent", {**AGENT, "filesystems": [{"usedBytes": -1}]}),
    "used bytes over int64": ("agent", {**AGENT, "filesystems": [{"usedBytes": 2**63}]}),
    "an address family that is neither": ("agent", {**AGENT, "interfaces": [
        {"ipAddresses": [{"address": "1.2.3.4", "family": "ipv5"}]}]}),
    "a prefix over 128": ("agent", {**AGENT, "interfaces": [
        {"ipAddresses": [{"address": "1.2.3.4", "family": "ipv4", "prefix": 129}]}]}),
    "too many addresses": ("agent", {**AGENT, "interfaces": [
        {"ipAddresses": [{"address": "a", "family": "ipv4"}] * 257}]}),
    "a timezone offset over a day": ("agent", {**AGENT, "timezone": {"zone": "x", "offset": 86401}}),
    "too many errors": ("agent", {**AGENT, "errors": {f"c{i}": "e" for i in range(65)}}),
    "an unknown key in a report": ("agent", {**AGENT, "surprise": 1}),
    "a session over 64": ("agent", {**AGENT, "session": "s" * 65}),
    "a negative time": ("domain", {**DOMAIN, "observedAt": -1}),
    "an empty namespace": ("domain", {**DOMAIN, "vmi": {"namespace": "", "name": "vm"}}),
    "a uid over 128": ("domain", {**DOMAIN, "vmi": {"namespace": "ns", "name": "vm", "uid": "u" * 129}}),
    "an unknown domain state": ("domain", {**DOMAIN, "state": "crashed"}),
    "a queue count of 0": ("domain", {**DOMAIN, "interfaces": [{"queueCount": 0}]}),
    "a node name over 253": ("domain", {**DOMAIN, "node": "n" * 254}),
    "a missing time": ("domain", {k: v for k, v in DOMAIN.items() if k != "observedAt"}),
}
RAW_HOSTILE = {
    "NaN": ("domain", b'{"vmi":{"namespace":"ns","name":"vm"},"node":"n","observedAt":NaN}'),
    "a time out of a float's range": ("domain",
                                      b'{"vmi":{"namespace":"ns","name":"vm"},"node":"n","observedAt":1e400}'),
    "not JSON": ("agent", b'{"vmi":'),
}


def _refused_by_the_model(model: type[BaseModel], wire: bytes) -> bool:
    try:
        model.model_validate_json(wire)
    except ValidationError:
        return True
    return False


@pytest.mark.parametrize("case", [*HOSTILE, *RAW_HOSTILE])
def test_a_hostile_report_is_refused_by_both(case: str) -> None:
    side, body = HOSTILE.get(case) or RAW_HOSTILE[case]
    wire = body if isinstance(body, bytes) else json.dumps(body).encode()
    model, decoder = SIDES[side]
    assert _refused_by_the_model(model, wire), "the contract refuses it"
    with pytest.raises(msgspec.DecodeError):
        decoder.decode(wire)
