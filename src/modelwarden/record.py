"""``@record``: dataclass-style classes that cost next to nothing to define.

``@dataclass(frozen=True, slots=True)`` compiles six methods per class with ``exec`` when the
class is defined (~0.6 ms each on Python 3.11); the scan path defines ~75 such classes, which
was a quarter of a whole ``modelwarden scan``.  ``@record`` gives the same behaviour for the
features this package uses (fields with defaults or ``field(default_factory=...)``, a keyword
or positional ``__init__``, ``__repr__``, value ``__eq__``/``__hash__``, frozen instances,
``__slots__``, ``__match_args__``, pickling) without compiling anything at definition time:

* ``__eq__``, ``__hash__``, ``__repr__`` and the frozen ``__setattr__`` are closures over the
  field names (no ``exec``);
* ``__init__`` is compiled on the first instantiation of the class, so a class a scan never
  instantiates (most IR types of other formats) never costs a compile, and the instances of
  the ones it does use are built by a straight-line ``__init__`` as fast as a dataclass's.

Records stay dataclasses to the standard library: ``dataclasses.fields``, ``replace``,
``asdict`` and ``is_dataclass`` work (the field table they read is built on first access).
``replace`` here is the same operation without importing :mod:`dataclasses`.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING: Any = object()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record."""


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], object]) -> None:
        self.factory = factory


def field(*, default_factory: Callable[[], object]) -> Any:
    """A field whose default is made per instance (``field(default_factory=dict)``)."""
    return _Factory(default_factory)


def _is_classvar(annotation: object) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return isinstance(text, str) and (text.startswith(("ClassVar", "typing.ClassVar")))


def _collect(cls: type) -> tuple[dict[str, object], dict[str, str]]:
    """Field name -> default (``_MISSING``, a value or a ``_Factory``), in definition order, bases first."""
    defaults: dict[str, object] = {}
    types: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        for name, (default, typ) in getattr(base, "__record_spec__", {}).items():
            defaults[name], types[name] = default, typ
    for name, typ in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(typ):
            continue
        defaults[name] = cls.__dict__.get(name, _MISSING)
        types[name] = typ
    seen_default = False
    for name, default in defaults.items():
        if default is _MISSING and seen_default:
            raise TypeError(f"{cls.__name__}: non-default field {name!r} follows a default field")
        seen_default = seen_default or default is not _MISSING
    return defaults, types


def _values_getter(names: tuple[str, ...]) -> Callable[[object], tuple]:
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _compile_init(cls: type, frozen: bool) -> Callable[..., None]:
    spec: dict[str, tuple[object, str]] = cls.__record_spec__  # type: ignore[attr-defined]
    params, body = ["self"], []
    env: dict[str, object] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    for name, (default, _typ) in spec.items():
        if default is _MISSING:
            params.append(name)
            value = name
        elif isinstance(default, _Factory):
            env[f"_f_{name}"] = default.factory
            params.append(f"{name}=_MISSING")
            value = f"_f_{name}() if {name} is _MISSING else {name}"
        else:
            env[f"_d_{name}"] = default
            params.append(f"{name}=_d_{name}")
            value = name
        slot = _slot_setter(cls, name) if frozen else None
        if slot is not None:  # the slot's own setter: a third cheaper than object.__setattr__
            env[f"_s_{name}"] = slot
            body.append(f"    _s_{name}(self, {value})")
        else:
            body.append(f"    _set(self, {name!r}, {value})" if frozen else f"    self.{name} = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    src = f"def __init__({', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    ns: dict[str, Any] = {}
    exec(compile(src, f"<record {cls.__qualname__}.__init__>", "exec"), env, ns)  # noqa: S102 - field names only
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None] | None:
    """The ``__set__`` of the slot that stores ``name`` (None when instances keep it in a dict)."""
    for klass in cls.__mro__:
        desc = klass.__dict__.get(name)
        if desc is not None:
            return desc.__set__ if type(desc) is _MEMBER else None
    return None


_MEMBER = type(_Factory.__dict__["factory"])  # types.MemberDescriptorType, without importing types


class _DataclassFields:
    """``__dataclass_fields__`` built on first access, so :mod:`dataclasses` functions accept records."""

    def __get__(self, obj: object, owner: type) -> dict[str, Any]:
        import dataclasses

        table = owner.__dict__.get("__record_dc_fields__")
        if table is None:
            table = {}
            for name, (default, typ) in owner.__record_spec__.items():  # type: ignore[attr-defined]
                if isinstance(default, _Factory):
                    f = dataclasses.field(default_factory=default.factory)
                elif default is _MISSING:
                    f = dataclasses.field()
                else:
                    f = dataclasses.field(default=default)
                f.name, f.type = name, typ
                f._field_type = dataclasses._FIELD  # type: ignore[attr-defined]  # what fields()/replace() select
                table[name] = f
            type.__setattr__(owner, "__record_dc_fields__", table)
        return table


def record(cls: type[T] | None = None, /, *, frozen: bool = True, slots: bool = True,
           eq: bool = True) -> Any:
    """Class decorator: ``@record`` is ``@dataclass(frozen=True, slots=True)``; ``frozen``, ``slots``
    and ``eq`` mean what they mean there."""

    def wrap(c: type[T]) -> type[T]:
        return _build(c, frozen=frozen, slots=slots, eq=eq)

    return wrap if cls is None else wrap(cls)


def _build(cls: type[T], *, frozen: bool, slots: bool, eq: bool) -> type[T]:
    defaults, types = _collect(cls)
    own = [n for n in cls.__dict__.get("__annotations__", {}) if n in defaults]
    names = tuple(defaults)
    ns = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    if slots:
        for n in own:
            ns.pop(n, None)  # defaults live in __record_spec__ (and would clash with the slots)
        ns["__slots__"] = tuple(own)
    ns["__record_spec__"] = {n: (defaults[n], types[n]) for n in names}
    ns[_FIELDS] = names
    ns.setdefault("__match_args__", names)
    ns["__dataclass_fields__"] = _DataclassFields()
    values = _values_getter(names)
    user = cls.__dict__
    if "__init__" not in user:
        ns["__init__"] = _lazy_init(frozen)
    if "__repr__" not in user:
        ns["__repr__"] = _repr
    if eq and "__eq__" not in user:
        ns["__eq__"] = _make_eq(values)
    if eq and "__hash__" not in user:
        ns["__hash__"] = _make_hash(values) if frozen else None
    if frozen:
        ns["__setattr__"] = _frozen_setattr
        ns["__delattr__"] = _frozen_delattr
        ns["__reduce__"] = _make_reduce(values)
    new = type(cls)(cls.__name__, cls.__bases__, ns)
    new.__qualname__ = cls.__qualname__
    return new


def _lazy_init(frozen: bool) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        owner = next(c for c in type(self).__mro__ if c.__dict__.get("__init__") is __init__)
        init = _compile_init(owner, frozen)
        type.__setattr__(owner, "__init__", init)
        init(self, *args, **kwargs)

    return __init__


def _repr(self: Any) -> str:
    fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in getattr(type(self), _FIELDS))
    return f"{type(self).__qualname__}({fields})"


def _make_eq(values: Callable[[object], tuple]) -> Callable[[Any, object], Any]:
    def __eq__(self: Any, other: object) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _make_hash(values: Callable[[object], tuple]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _make_reduce(values: Callable[[object], tuple]) -> Callable[[Any], tuple]:
    def __reduce__(self: Any) -> tuple:
        return (type(self), values(self))

    return __reduce__


def _frozen_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def fields(obj: object) -> tuple[str, ...]:
    """The field names of a record class or instance, in order."""
    return getattr(obj, _FIELDS)


def replace(obj: T, /, **changes: object) -> T:
    """A copy of a record (or a dataclass) with some fields changed."""
    names = getattr(type(obj), _FIELDS, None)
    if names is None:
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    for name in names:
        if name not in changes:
            changes[name] = getattr(obj, name)
    return type(obj)(**changes)
