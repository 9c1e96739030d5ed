"""The exceptions a user can cause, each carrying its exit code (see docs/design.md: "Exit codes").

The CLI prints these as one line; anything else is a bug and prints as one line too,
with the traceback only under `--verbose`.
"""

from __future__ import annotations


class SkutagError(Exception):
    """An error the user can act on. Printed as one line; exits with `exit_code`."""

    exit_code = 1


class InputError(SkutagError):
    """A bad input path or file: missing, unreadable, corrupt, or of the wrong kind (exit 2)."""

    exit_code = 2


class DeviceError(SkutagError):
    """The requested device or execution provider is not usable here (exit 1)."""


class TooManyErrors(SkutagError):
    """The job finished and wrote every row, but more inputs failed than allowed (exit 3)."""

    exit_code = 3


class TransientError(SkutagError):
    """A fault worth retrying later (exit 75, EX_TEMPFAIL): a store unavailable past the retry budget,
    a listing that failed part-way (nothing is published from a partial listing)."""

    exit_code = 75


class ListingError(TransientError):
    """A source could not be listed completely: names the folder or prefix (exit 75; no plan written)."""


class SystemicFault(SkutagError):
    """The run stopped on a fault a retry will not fix: access denied, missing bucket, inference fails (exit 4)."""

    exit_code = 4


class LeaseHeld(TransientError):
    """Another live process holds this shard's lease, or this process lost it: retry later (exit 75)."""

    exit_code = 75
