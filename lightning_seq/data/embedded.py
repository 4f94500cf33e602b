"""Embedded default datasets, available offline on every machine.

Text: the English documentation bundled with every CPython (``pydoc_data.topics``, about 465 KB,
one document per help topic). It is what a recipe trains on when no ``source`` is given.
"""

import hashlib
import sys

from lightning_seq.errors import InputError

PYDOC_SOURCE = "embedded:pydoc"


def pydoc_topics() -> list[str]:
    """The documents of ``pydoc_data.topics``, one per help topic, in sorted topic order."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some distributions ship Python without it
        raise InputError(
            "data.source: the embedded corpus needs the 'pydoc_data' module of the standard library, "
            f"which this Python ({sys.executable}) lacks. Fix: give a text file or folder as data.source."
        ) from err
    return [topics[name] for name in sorted(topics)]


def pydoc_fingerprint() -> str:
    """A short hash of the embedded corpus; it changes when the Python version ships other docs."""
    digest = hashlib.sha256()
    for doc in pydoc_topics():
        digest.update(doc.encode("utf-8"))
    return digest.hexdigest()[:16]
