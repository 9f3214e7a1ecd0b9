"""What every benchmark reports: rows of (mlbox, floor, unit, target), collected as they are measured."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    name: str
    mlbox: float
    floor: float | None
    unit: str
    target: str
    ok: bool | None
    floor_name: str = ""

    @property
    def ratio(self) -> float | None:
        """How many times slower than the floor (1.0 = as fast)."""
        if not self.floor or not self.mlbox:
            return None
        return self.floor / self.mlbox if self.unit.endswith("/s") else self.mlbox / self.floor

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ratio": self.ratio}


def settle() -> None:
    """Start each measurement from the same state: collect garbage, give freed heap back to the OS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Recorder:
    """Collects rows and passes each (and each stage name) to the caller as it comes."""

    def __init__(self, on_row: Callable[[Row], None] | None, on_stage: Callable[[str], None] | None) -> None:
        self.rows: list[Row] = []
        self._on_row = on_row
        self._on_stage = on_stage

    def add(self, row: Row) -> None:
        self.rows.append(row)
        if self._on_row:
            self._on_row(row)

    def stage(self, message: str) -> None:
        if self._on_stage:
            self._on_stage(message)
