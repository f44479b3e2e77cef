"""A function of the C library the process runs on (Linux only), or None where there is none."""

from __future__ import annotations

import ctypes
import sys
from typing import Any


def libc_function(name: str, argtypes: list[Any], restype: Any) -> Any | None:
    """``name`` from the process's own symbols (libc's) with its C signature set; None when
    not on Linux or the C library has no such function (musl has no ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function
