"""``Datum``: one labelled image path (Dassl's data instance), kept light for million-entry indexes."""
from __future__ import annotations


class Datum:
    """An image path with its label, domain and class name.

    Unlike Dassl's ``Datum``, the file is not stat'ed here: building an
    index of 1.28M entries from a split file must not touch the disk. A
    missing file is reported when the image is read
    (:func:`ampt.data.images.read_image`). ``__slots__`` keeps an instance
    small; the attributes are read-only, as in Dassl.
    """

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath: str = "", label: int = 0, domain: int = 0, classname: str = "") -> None:
        self._impath = impath
        self._label = label
        self._domain = domain
        self._classname = classname

    @property
    def impath(self) -> str:
        return self._impath

    @property
    def label(self) -> int:
        return self._label

    @property
    def domain(self) -> int:
        return self._domain

    @property
    def classname(self) -> str:
        return self._classname

    def __repr__(self) -> str:
        return (
            f"Datum(impath={self._impath!r}, label={self._label}, "
            f"domain={self._domain}, classname={self._classname!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Datum):
            return NotImplemented
        return (self._impath, self._label, self._domain, self._classname) == (
            other._impath, other._label, other._domain, other._classname
        )

    def __hash__(self) -> int:
        return hash((self._impath, self._label, self._domain, self._classname))
