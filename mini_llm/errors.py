"""Errors a user can cause and fix. The CLI prints them as one line and exits non-zero;
anything else that escapes is a bug and keeps its traceback."""


class MiniLLMError(Exception):
    """Base class: bad input, bad configuration, missing data or a broken file."""


class ConfigError(MiniLLMError):
    pass


class DataError(MiniLLMError):
    pass


class CheckpointError(MiniLLMError):
    pass


class DivergedError(MiniLLMError):
    """Training produced a non-finite loss: stopped before anything non-finite was saved."""


class OutputError(MiniLLMError):
    """An output that cannot or must not be written: it exists, it is a device or a folder,
    its folder is missing, or the OS refused (permission, full disk, read-only)."""


class KernelSelectionError(MiniLLMError):
    pass


class KernelInputError(MiniLLMError, ValueError):
    """A kernel was given inputs it cannot run on (device, dtype, rank, shape, contiguity):
    raised by its launcher before anything is launched."""


class FitError(MiniLLMError):
    """A fit the data cannot support: too few points, or an optimizer that did not converge."""
