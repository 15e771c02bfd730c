"""The method registry: names to :class:`avgn.methods.base.Method` instances (like timm's
``register_model`` / ``create_model``).

    @register_method
    class MyMethod(Method):
        name = "mine"
        ...

    get_method("mine").build(cfg)

A method module registers itself when :mod:`avgn.methods` imports it (one line there per method).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from torch import nn

from avgn.methods.base import MAP_KINDS, Method

__all__ = ["register_method", "get_method", "list_methods", "create_model"]

_REGISTRY: dict[str, Method] = {}
M = TypeVar("M", bound=type)


def register_method(cls: M) -> M:
    """Class decorator: register one instance of a :class:`Method` subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    if not cls.name or not cls.label:
        raise ValueError(f"{cls.__name__} must set the class attributes 'name' and 'label'")
    if cls.kind not in MAP_KINDS:
        raise ValueError(f"{cls.__name__}.kind must be one of {MAP_KINDS}, got {cls.kind!r}")
    if "oracle" not in cls.modes or not set(cls.modes) <= {"oracle", "predicted"}:
        raise ValueError(f"{cls.__name__}.modes must contain 'oracle' (and may contain 'predicted'), got {cls.modes}")
    if "predicted" in cls.modes and cls.kind != "class_aware":
        raise ValueError(f"{cls.__name__}: only a class-aware method can select its sources ('predicted')")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"a method named {cls.name!r} is already registered ({type(_REGISTRY[cls.name]).__name__})")
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method called ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[key]


def list_methods(learned: bool | None = None) -> tuple[str, ...]:
    """Names of the registered methods in registration order (only learned ones, or only the
    non-learned references, when ``learned`` is given)."""
    return tuple(n for n, m in _REGISTRY.items() if learned is None or m.learned == learned)


def create_model(name: str, cfg: Any = None, **overrides: Any) -> nn.Module:
    """Build method ``name``'s model from ``cfg`` (default: its config class's defaults), with
    fields replaced by ``overrides`` (timm's ``create_model``)."""
    method = get_method(name)
    if method.config_cls is None:
        raise ValueError(f"{name!r} has no trainable model")
    if cfg is None:
        cfg = method.config_cls(**overrides)
    elif overrides:
        cfg = replace(cfg, **overrides)
    return method.build(cfg)
