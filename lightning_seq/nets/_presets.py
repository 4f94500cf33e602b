"""Named sizes: thin presets over one general class's constructor.

Every family has ``nano``, the millisecond size the tests use, and the papers' names for the papers'
sizes. Two ways to pick one:

* in Python, ``ViT.from_preset("small", num_classes=10)``: the preset's values, with the keyword
  arguments given replacing any of them;
* in a recipe, the constructor's ``preset`` argument::

      net:
        class_path: lightning_seq.nets.ViT
        init_args: {preset: small, drop_path: 0.0}

  The preset's values fill every argument the recipe leaves at the net's default, and what the recipe
  sets wins. (The command line hands a net all of its arguments, defaults included, so an argument
  set to exactly its default value counts as left alone: to keep such a value over the preset's,
  use ``from_preset`` or leave ``preset`` out.)
"""

import functools
import inspect
from typing import Any, ClassVar

from lightning_seq.errors import InputError


class Presets:
    """Mixin for a net with a ``PRESETS`` table of constructor arguments per size name.

    A subclass whose ``__init__`` takes ``preset: str | None = None`` gets that argument applied
    before its constructor runs (see the module docstring).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and "preset" in inspect.signature(init).parameters:
            cls.__init__ = _applying_presets(cls, init)

    @classmethod
    def check_preset(cls, name: str) -> dict[str, Any]:
        """The arguments of preset ``name``; :class:`InputError` naming the known ones if there is none."""
        if name not in cls.PRESETS:
            raise InputError(
                f"{cls.__name__}: preset={name!r} is unknown; expected one of {', '.join(cls.PRESETS)}."
            )
        return cls.PRESETS[name]

    @classmethod
    def from_preset(cls, name: str, *args: Any, **overrides: Any):
        """Build a named size from :attr:`PRESETS`; ``args`` go first to the constructor, ``overrides``
        replace any preset value."""
        return cls(*args, **{**cls.check_preset(name), **overrides})


def _applying_presets(cls: type, init):
    signature = inspect.signature(init)
    defaults = {k: p.default for k, p in signature.parameters.items() if p.default is not p.empty}

    @functools.wraps(init)
    def init_with_preset(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        name = bound.arguments.get("preset")
        if name is not None:
            for key, value in type(self).check_preset(name).items():
                if key not in bound.arguments or _same(bound.arguments[key], defaults.get(key)):
                    bound.arguments[key] = value
        init(*bound.args, **bound.kwargs)

    return init_with_preset


def _same(a: Any, b: Any) -> bool:
    """Equal, with lists and tuples alike (a recipe's ``[2, 2]`` is a default's ``(2, 2)``)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return type(a) is type(b) and a == b
