"""Errors the user can fix. The CLI prints their message as one line and exits non-zero, no traceback."""

from __future__ import annotations


class RcaError(Exception):
    """Base class: a problem with the input, the spec or the environment that the user can fix."""

    exit_code = 2


class SpecError(RcaError, ValueError):
    """A pipeline string, option value or config file is invalid."""


class SourceError(RcaError, ValueError):
    """The image source (folder or manifest) cannot be used."""


class ModelError(RcaError, ValueError):
    """The DNN under test cannot be loaded or does not accept the images."""


class DeviceError(RcaError, RuntimeError):
    """The GPU was demanded but CUDA or the GPU libraries are missing."""


class TooFewImagesError(RcaError, ValueError):
    """Fewer usable images than a stage needs."""


class UnsupportedOnGPU(RcaError, NotImplementedError):
    """A GPU adapter cannot honour a setting; the registry falls back to the CPU under --device auto."""


GPU_INSTALL_HINT = (
    "install the GPU extras with: pip install 'rca-gpu[gpu]' (CUDA 13, = gpu-cu13) or 'rca-gpu[gpu-cu12]' (CUDA 12), "
    "or use --device auto/cpu"
)


def escape_surrogates(text: str) -> str:
    """``text`` as valid UTF-8: file-name bytes that are not UTF-8 (which Python holds as lone surrogates)
    become ``\\xNN`` escapes; other text is returned as it is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable(text: object) -> str:
    """``text`` as one line any terminal can show: :func:`escape_surrogates`, and line breaks as spaces."""
    value = escape_surrogates(str(text))
    return " ".join(value.splitlines()) if ("\n" in value or "\r" in value) else value
