"""What every exit table shares: the vendor (:class:`Isa`), the field widths, the name of an unnamed code.

Standard library only; importing this module has no side effects.
"""

from __future__ import annotations

import enum

__all__ = ["Isa", "unknown_name"]

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def unknown_name(code: int) -> str:
    """The name given to a code nobody names: ``UNKNOWN(0x<lower-case hex>)``.

    Negative codes are shown as their 64-bit two's complement.
    """
    return f"UNKNOWN(0x{code & _U64 if code < 0 else code:x})"


class Isa(enum.IntEnum):
    """Hardware virtualisation flavour, as in ``kvm_exit``'s ``isa`` field (KVM_ISA_VMX/SVM)."""

    UNKNOWN = 0
    VMX = 1
    SVM = 2

    @classmethod
    def coerce(cls, value: int | str | None) -> Isa:
        """``Isa`` from an int (1, 2), a name (``"vmx"``, ``"SVM"``) or None; anything else is UNKNOWN."""
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls.coerce(int(text))
            return cls.__members__.get(text.upper(), cls.UNKNOWN)
        try:
            return cls(int(value)) if value is not None else cls.UNKNOWN
        except ValueError:
            return cls.UNKNOWN
