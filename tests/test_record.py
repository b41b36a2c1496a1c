"""``modelwarden.record``: behaves like the frozen dataclass it replaces, for every feature the package uses."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Mapping
from typing import ClassVar

import pytest

from modelwarden.ir import Artifact, ArtifactFormat, DType, Node
from modelwarden.record import FrozenInstanceError, field, record, replace


@record
class Point:
    """A point."""

    x: int
    y: int = 0
    tags: Mapping[str, str] = field(default_factory=dict)
    kind: ClassVar[str] = "point"

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@dataclasses.dataclass(frozen=True, slots=True)
class DPoint:
    x: int
    y: int = 0
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)


@record(frozen=False, slots=False)
class Counter:
    n: int = 0
    seen: list[str] = field(default_factory=list)


def test_init_defaults_and_factories():
    p = Point(1)
    assert (p.x, p.y, p.tags) == (1, 0, {})
    assert Point(1).tags is not Point(1).tags  # a fresh default per instance
    assert Point(x=2, y=3, tags={"a": "b"}).tags == {"a": "b"}
    assert Point(1, 2).norm1 == 3 and Point.kind == "point"
    with pytest.raises(TypeError):
        Point()
    with pytest.raises(TypeError):
        Point(1, z=2)


def test_same_behaviour_as_the_dataclass():
    for args in [(1,), (1, 2), (3, 4, {"k": "v"})]:
        r, d = Point(*args), DPoint(*args)
        assert repr(r).replace("Point", "DPoint", 1) == repr(d)
    assert hash(Point(1, 2, ())) == hash(DPoint(1, 2, ()))  # hashable when every field is
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(2, 1)
    assert Point(1) != DPoint(1)  # like a dataclass: equal only to the same class
    assert {Point(1, tags=()), Point(1, tags=())} == {Point(1, tags=())}
    assert Point.__match_args__ == ("x", "y", "tags")
    match Point(5, 6):
        case Point(a, b):
            assert (a, b) == (5, 6)


def test_frozen_and_slotted():
    p = Point(1)
    with pytest.raises(FrozenInstanceError):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    assert not hasattr(p, "__dict__") and Point.__slots__ == ("x", "y", "tags")
    c = Counter()
    c.n += 1
    c.seen.append("a")
    assert c == Counter(1, ["a"]) and Counter.__hash__ is None  # mutable records: unhashable, like dataclasses


def test_dataclasses_functions_accept_records():
    p = Point(1, 2, {"a": "b"})
    assert dataclasses.is_dataclass(p) and [f.name for f in dataclasses.fields(Point)] == ["x", "y", "tags"]
    assert dataclasses.replace(p, y=5) == Point(1, 5, {"a": "b"})
    assert dataclasses.asdict(p) == {"x": 1, "y": 2, "tags": {"a": "b"}}
    assert replace(p, x=7) == Point(7, 2, {"a": "b"})
    assert replace(DPoint(1), x=2) == DPoint(2)  # and plain dataclasses
    with pytest.raises(TypeError):
        replace(p, nope=1)


def test_pickle_and_copy():
    n = Node("a", "Const", ("x:0",), {"dtype": DType("float32")})
    assert pickle.loads(pickle.dumps(n)) == n
    assert copy.deepcopy(n) == n and copy.copy(n) == n
    a = Artifact("/m", "m", ArtifactFormat.SAVEDMODEL, metadata={"k": "v"})
    assert pickle.loads(pickle.dumps(a)) == a


def test_init_is_compiled_on_first_use():
    @record
    class Lazy:
        a: int
        b: str = "x"

    lazy_init = Lazy.__dict__["__init__"]
    assert Lazy(1) == Lazy(a=1, b="x")
    assert Lazy.__dict__["__init__"] is not lazy_init  # replaced by the compiled one
    assert Lazy(2, "y").b == "y"


def test_field_order_is_checked():
    with pytest.raises(TypeError, match="non-default field"):
        @record
        class Bad:
            a: int = 0
            b: int


def test_frozen_init_sets_slots_of_every_class_in_the_hierarchy():
    """The compiled __init__ writes each field through the slot that holds it, also for fields a
    base class declares; a frozen record without slots keeps them in its dict."""

    @record
    class Base:
        a: int
        b: str = "b"

    @record
    class Child(Base):
        c: tuple = ()

    @record(slots=False)
    class Loose:
        a: int
        b: list = field(default_factory=list)

    x = Child(1, "z", (2,))
    assert (x.a, x.b, x.c) == (1, "z", (2,)) and Child.__slots__ == ("c",) and Base.__slots__ == ("a", "b")
    assert x == Child(a=1, b="z", c=(2,)) and not hasattr(x, "__dict__")
    with pytest.raises(FrozenInstanceError):
        x.a = 5  # type: ignore[misc]
    loose = Loose(3)
    assert loose.__dict__ == {"a": 3, "b": []} and loose.b is not Loose(3).b
    with pytest.raises(FrozenInstanceError):
        loose.a = 4  # type: ignore[misc]
