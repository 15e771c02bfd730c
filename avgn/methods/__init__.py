"""Localization methods behind one interface (:class:`Method`) and one registry.

- :mod:`avgn.methods.base`        ``Method`` (the interface), ``MethodPredictor``, ``model_inputs``
- :mod:`avgn.methods.registry`    ``register_method``, ``get_method``, ``list_methods``, ``create_model``
- :mod:`avgn.methods.avgn`        AVGN (class-aware maps, predicted source selection)
- :mod:`avgn.methods.ezvsl`       EZ-VSL (one shared map)
- :mod:`avgn.methods.mal`         Mix-and-Localize (K slot maps)
- :mod:`avgn.methods.tvsl`        T-VSL (class-aware maps from text anchors; zero-shot classes)
- :mod:`avgn.methods.references`  the centre prior, the object prior, the perfect map
- :mod:`avgn.methods.dsol`        DSOL (two stages: object clusters, class-aware maps that filter silent objects)

Adding a method: its own module with a registered :class:`Method` subclass, and one import line
below.
"""

from __future__ import annotations

from avgn.methods.base import MAP_KINDS, EpochContext, Method, MethodPredictor, model_inputs
from avgn.methods.registry import create_model, get_method, list_methods, register_method

# the registered methods, one line each (registration order = the order of tables)
from avgn.methods import avgn as _avgn  # noqa: E402,F401
from avgn.methods import ezvsl as _ezvsl  # noqa: E402,F401
from avgn.methods import mal as _mal  # noqa: E402,F401
from avgn.methods import dsol as _dsol  # noqa: E402,F401
from avgn.methods import tvsl as _tvsl  # noqa: E402,F401
from avgn.methods import references as _references  # noqa: E402,F401

__all__ = ["MAP_KINDS", "EpochContext", "Method", "MethodPredictor", "model_inputs", "get_method", "list_methods", "register_method", "create_model"]
