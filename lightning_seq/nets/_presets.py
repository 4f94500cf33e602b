"""Named sizes: a thin ``from_preset`` over one general class's constructor."""

from typing import Any, ClassVar

from lightning_seq.errors import InputError


class Presets:
    """Mixin for a net with a ``PRESETS`` table of constructor arguments per size name."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_preset(cls, name: str, *args: Any, **overrides: Any):
        """Build a named size from :attr:`PRESETS`; ``args`` go first to the constructor, ``overrides``
        replace any preset value."""
        if name not in cls.PRESETS:
            raise InputError(
                f"{cls.__name__}: preset={name!r} is unknown; expected one of {', '.join(cls.PRESETS)}."
            )
        return cls(*args, **{**cls.PRESETS[name], **overrides})
