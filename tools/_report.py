"""Pieces every benchmark report shares: markdown tables, footnotes, the device and the versions."""
from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass, field
from typing import Dict, List, Sequence

__all__ = ["Footnotes", "markdown_table", "device_name", "version_of", "cpu_name"]


@dataclass
class Footnotes:
    """Numbered footnotes: ``ref(text)`` gives ``[n]``, the same number for the same text."""

    notes: Dict[str, int] = field(default_factory=dict)

    def ref(self, text: str) -> str:
        return f"[{self.notes.setdefault(text, len(self.notes) + 1)}]"

    def lines(self) -> List[str]:
        return [f"{ref}. {text}" for text, ref in self.notes.items()]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> List[str]:
    """A markdown table padded to its columns' widths; ``right[i]`` right-aligns column i."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return [fmt(headers), rule, *(fmt(r) for r in rows)]


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


def device_name(device) -> str:
    """``cuda: <GPU name>`` or ``cpu: <CPU model>, <torch threads> threads``."""
    import torch

    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {torch.get_num_threads()} threads"


def version_of(module_name: str) -> str:
    """``module.__version__``, or 'not installed'."""
    try:
        return importlib.import_module(module_name).__version__
    except ImportError:
        return "not installed"
