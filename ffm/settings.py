"""Typed config sections: the dataclasses are the source of truth for keys, defaults, help and allowed values.

This module is the generic machinery under every job config and knows no section by name. A plug-in (a task,
method, strategy, client mod, codec, privacy mechanism, stream or observer) declares its keys as a dataclass
beside its code, peft-style: :func:`option` for a scalar key (its help, and its allowed values when it has a
fixed set), :func:`items` for a list-valued key, and ``__post_init__`` with :func:`require` for the rest of
its rules. How a section's dataclass is found is a :class:`SectionKind`:

- :class:`Plain`: one dataclass (``data``, ``train``);
- :class:`Variant`: ``name`` picks a registered dataclass (``method.name=lora`` has LoRA's keys and no other);
- :class:`Composite`: a base plus the keys every registered entry contributes (``client``: the mods' keys).

A plug-in that owns a whole section registers it in :data:`SECTIONS`; a rule that spans sections is a
function registered in :data:`CHECKS` that reads capabilities, never plug-in names; a key that moved is
registered in :data:`MOVED`, so an old config gets one line naming the new key. ``ffm.config`` builds the job
from all of them.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from ffm.errors import ConfigError
from ffm.registry import Registry

__all__ = [
    "CHECKS",
    "Composite",
    "Job",
    "MOVED",
    "Plain",
    "SECTIONS",
    "SectionKind",
    "Variant",
    "build",
    "coerce",
    "describe",
    "flatten",
    "items",
    "nest",
    "option",
    "require",
    "scalars",
    "to_dict",
]

Choices = tuple[str, ...] | Callable[[], Iterable[str]] | None


def option(default: Any, help: str, *, choices: Choices = None) -> Any:
    """A scalar key: its default, its help text and, when it has a fixed set, its allowed values (a tuple, or a
    function that lists them, e.g. a registry's names). ``help`` mirrors peft's ``field(metadata={"help": ...})``."""
    return field(default=default, metadata={"help": help, "choices": choices})


def items(help: str, default: Iterable[Any] = (), *, choices: Choices = None) -> Any:
    """A list-valued key (written ``a,b`` or ``[a, b]``); each item must be one of ``choices`` when given."""
    initial = tuple(default)
    return field(default_factory=lambda: list(initial), metadata={"help": help, "choices": choices})


def require(ok: bool, message: str) -> None:
    """Refuse a value: ``message`` names the key, what was given and what would be valid."""
    if not ok:
        raise ConfigError(message)


class Job:
    """The job config as plug-ins see it: one attribute per top-level key and per section.

    ``ffm.config`` builds the concrete dataclass (core keys, the seams' sections, every registered section) and
    makes it a subclass of this one, so a plug-in can name the type without importing the job module.
    """


class SectionKind:
    """How a section's dataclass is chosen; subclasses say it for one kind of section."""

    base: type

    def resolve(self, raw: dict[str, Any], prefix: str, lenient: bool) -> tuple[type, dict[str, Any]]:
        """The dataclass for ``raw`` and the keys of ``raw`` it takes (the others raise, or are dropped when
        ``lenient``)."""
        raise NotImplementedError

    def default(self) -> Any:
        """The section as built from no keys at all."""
        return self.resolve({}, "", False)[0]()

    def classes(self) -> list[tuple[list[str], type]]:
        """Every dataclass the section can be, with the variants it stands for (empty: always)."""
        return [([], self.base)]

    def validate(self, section: Any, prefix: str) -> None:
        """Rules beyond the fields' own (a composite runs each contributor's)."""

    def names(self) -> list[str] | None:
        """The registered variants' names (listed beside ``name`` by ``ffm config``), or None."""
        return None


@dataclass(frozen=True)
class Plain(SectionKind):
    """A section that is always the same dataclass."""

    base: type

    def resolve(self, raw: dict[str, Any], prefix: str, lenient: bool) -> tuple[type, dict[str, Any]]:
        return self.base, raw


@dataclass(frozen=True)
class Variant(SectionKind):
    """``name`` picks the dataclass that the entry registered under that name declares (its ``config``).

    ``lenient`` drops other variants' keys instead of refusing them: a Flower run_config carries every declared
    key (the app must declare the union of all variants' keys), not only the chosen variant's.
    """

    base: type
    registry: Registry[Any]

    def resolve(self, raw: dict[str, Any], prefix: str, lenient: bool) -> tuple[type, dict[str, Any]]:
        name = coerce(f"{prefix}name", raw.get("name", self.base.name), str)
        cls = self.registry[name].config
        own = _field_names(cls)
        kept: dict[str, Any] = {}
        for key, value in raw.items():
            owners = [other for other, entry in self.registry.items() if key in _field_names(entry.config)]
            if key in own or not owners:
                kept[key] = value  # unknown everywhere: build() names it
            elif not lenient:
                raise ConfigError(f"{prefix}{key} is a key of {prefix}name={'/'.join(owners)}, not of '{name}'; "
                                  f"'{name}' takes: {', '.join(sorted(own))}")
        return cls, kept

    def classes(self) -> list[tuple[list[str], type]]:
        by_class: dict[type, list[str]] = {}
        for name, entry in self.registry.items():
            by_class.setdefault(entry.config, []).append(name)
        return [([], self.base)] + [(names, cls) for cls, names in by_class.items()]

    def names(self) -> list[str] | None:
        return self.registry.names()


class Composite(SectionKind):
    """A base dataclass plus the keys of every registered entry that declares a ``config`` (a section many
    plug-ins share: each client mod adds its keys to ``client``). Field names must not clash; each
    contributor's own ``__post_init__`` rules run on the built section."""

    def __init__(self, base: type, *registries: Registry[Any]) -> None:
        self.base_fields = base
        self.registries = registries
        self._built: tuple[tuple[int, ...], type] | None = None

    def _contributors(self) -> list[type]:
        seen: list[type] = []
        for registry in self.registries:
            for _, entry in registry.items():
                config = getattr(entry, "config", None)
                if config is not None and config not in seen:
                    seen.append(config)
        return seen

    @property
    def base(self) -> type:  # type: ignore[override]
        """The merged dataclass, rebuilt when a registry has grown (a plug-in registered since)."""
        sizes = tuple(len(r) for r in self.registries)
        if self._built is None or self._built[0] != sizes:
            fields_: dict[str, tuple[str, Any, Any]] = {}
            for cls in [self.base_fields, *self._contributors()]:
                hints = typing.get_type_hints(cls)
                for f in dataclasses.fields(cls):
                    if f.name in fields_ and fields_[f.name][2] is not f:
                        raise ValueError(f"{cls.__name__}.{f.name} clashes with a key another plug-in declares")
                    fields_[f.name] = (f.name, hints[f.name], f)
            merged = dataclasses.make_dataclass(self.base_fields.__name__, list(fields_.values()))
            merged.__doc__ = self.base_fields.__doc__
            self._built = (sizes, merged)
        return self._built[1]

    def resolve(self, raw: dict[str, Any], prefix: str, lenient: bool) -> tuple[type, dict[str, Any]]:
        return self.base, raw

    def validate(self, section: Any, prefix: str) -> None:
        for cls in [self.base_fields, *self._contributors()]:
            cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SectionSpec:
    """A section a plug-in package owns: how it is built, and where it stands among the registered sections
    (``position``: smaller first; ties keep registration order)."""

    kind: SectionKind
    position: int = 100


SECTIONS: Registry[SectionSpec] = Registry("section", ordered=True)
"""Sections owned by plug-in packages (``client``, ``privacy``, ``search``, ``continual``, ``report``)."""

CHECKS: Registry[Callable[[Job], None]] = Registry("check", ordered=True)
"""Rules that span sections: each reads the job (capabilities, never plug-in names) and raises ConfigError."""

MOVED: dict[str, str] = {}
"""Keys (``section.key``) or values (``key=value``) that were renamed, mapped to their new name."""


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _choices(f: dataclasses.Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return [str(c) for c in (choices() if callable(choices) else choices)]


def coerce(key: str, value: Any, kind: Any) -> Any:
    """Turn ``value`` (from YAML, the command line or a Flower run_config) into ``kind``."""
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, str) and value.strip().startswith("["):
            value = _yaml_value(key, value)  # the YAML form [a, b] of a command-line override
        values = value.split(",") if isinstance(value, str) else value
        if not isinstance(values, list):
            raise ConfigError(f"{key}: expected a list (or a comma-separated string), got {value!r}")
        (item_kind,) = typing.get_args(kind) or (str,)
        texts = [str(item).strip() for item in values if str(item).strip()]
        return texts if item_kind is str else [coerce(f"{key}[{i}]", t, item_kind) for i, t in enumerate(texts)]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        text = str(value.value if isinstance(value, enum.Enum) else value)
        moved = MOVED.get(f"{key}={text}")
        if moved:
            raise ConfigError(f"{key}={text} is now {moved}; change it in your config")
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{key}: '{text}' is not one of {', '.join(m.value for m in kind)}") from None
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        return _number(key, value, "an integer", integer=True)
    if kind is float:
        return _number(key, value, "a number", integer=False)
    return "" if value is None else str(value)


def _number(key: str, value: Any, what: str, *, integer: bool) -> int | float:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {what}, got {value!r}") from None
    if not integer:
        return number
    if not number.is_integer():
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return int(number)


def _yaml_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: {text!r} is not a valid YAML list; write a,b or [a, b]") from None


def _check_choices(cls: type, built: Any, prefix: str) -> None:
    for f in dataclasses.fields(cls):
        allowed = _choices(f)
        if allowed is None:
            continue
        value = getattr(built, f.name)
        for item in value if isinstance(value, list) else [value]:
            if str(item) not in allowed:
                raise ConfigError(f"{prefix}{f.name}: '{item}' is not one of {', '.join(allowed)}")


def build(cls: type, raw: dict[str, Any], prefix: str = "", *, lenient: bool = False,
          sections: dict[str, SectionKind] | None = None) -> Any:
    """Build ``cls`` from nested dicts: unknown keys, wrong types and values outside a key's choices raise
    ConfigError naming the dotted key. ``sections`` say how each nested section's dataclass is found."""
    sections = sections or {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if dotted in MOVED:
            raise ConfigError(f"config key '{dotted}' is now '{MOVED[dotted]}'; rename it in your config")
        if key not in hints:
            raise ConfigError(f"unknown config key '{dotted}'; valid keys here: {', '.join(names)} "
                              "(`ffm config` lists all)")
        kind = sections.get(key) or (Plain(hints[key]) if dataclasses.is_dataclass(hints[key]) else None)
        if kind is None:
            kwargs[key] = coerce(dotted, value, hints[key])
            continue
        if not isinstance(value, dict):
            raise ConfigError(f"{dotted}: expected a section of keys, got {value!r}")
        section_cls, kept = kind.resolve(value, f"{dotted}.", lenient)
        kwargs[key] = build(section_cls, kept, f"{dotted}.", lenient=lenient)
        kind.validate(kwargs[key], f"{dotted}.")
    built = cls(**kwargs)
    _check_choices(cls, built, prefix)
    return built


def to_dict(tree: Any) -> dict[str, Any]:
    """A built config as plain nested dicts (enums as their value), for YAML and JSON."""
    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(tree))


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested dicts (the inverse of :func:`flatten`)."""
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key '{dotted}' sets a key inside '{part}', which is not a section")
            node = child
        node[leaf] = value
    return tree


def scalars(tree: dict[str, Any]) -> dict[str, Any]:
    """Lists comma-joined: Flower's run_config holds scalars only."""
    return {key: scalars(value) if isinstance(value, dict)
            else ",".join(map(str, value)) if isinstance(value, list) else value
            for key, value in tree.items()}


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return f"list[{typing.get_args(kind)[0].__name__}]"
    return "str" if isinstance(kind, type) and issubclass(kind, enum.Enum) else kind.__name__


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return value.value if isinstance(value, enum.Enum) else value


def _rows(cls: type, prefix: str) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help", "")
        allowed = _choices(f)
        if allowed is not None and not text.startswith(" | ".join(allowed)):
            text = f"{text} (one of: {', '.join(allowed)})" if text else ", ".join(allowed)
        rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), repr(_default(f)), text))
    return rows


def describe(cls: type, prefix: str = "", sections: dict[str, SectionKind] | None = None
             ) -> list[tuple[str, str, str, str]]:
    """Every key as (dotted key, type, default, help); a variant's own keys are tagged ``[variant, ...]``."""
    sections = sections or {}
    rows: list[tuple[str, str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = sections.get(f.name) or (Plain(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else None)
        if kind is None:
            rows += _rows_of_field(cls, f, prefix)
            continue
        owners: dict[tuple[str, str, str, str], list[str]] = {}
        shared: set[str] = set()
        variants = kind.names()
        for names, section_cls in kind.classes():
            for row in _rows(section_cls, f"{prefix}{f.name}."):
                if not names:
                    if variants and row[0] == f"{prefix}{f.name}.name":
                        row = (*row[:3], f"{row[3]}: {', '.join(variants)}")
                    rows.append(row)
                    shared.add(row[0])
                elif row[0] not in shared:
                    owners.setdefault(row, []).extend(names)
        rows += [(k, t, d, f"[{', '.join(sorted(n))}] {h}") for (k, t, d, h), n in owners.items()]
    return rows


def _rows_of_field(cls: type, f: dataclasses.Field, prefix: str) -> list[tuple[str, str, str, str]]:
    return [row for row in _rows(cls, prefix) if row[0] == f"{prefix}{f.name}"]
