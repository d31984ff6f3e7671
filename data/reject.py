"""Why a record cannot be used: the exception every validation step raises. A leaf of the data stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Reject(Exception):
    """Why a record cannot be used: a stable `reason` code and a human `message`."""

    reason: str
    message: str
