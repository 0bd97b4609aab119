"""What a report page holds: paragraphs, tables, code, notes on what is missing, figures, in sections."""
import math
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list
    rows: list


@dataclass
class Code:
    text: str


@dataclass
class Missing:
    what: str
    command: str | None = None


@dataclass
class Figure:
    caption: str
    drawing: object = None  # the matplotlib Figure, until the report writes it as ``path``
    path: Path | None = None  # the PNG


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)
    heading_size: float = 15
    key: str | None = None  # names the section's figure: key.png

    def missing(self):
        return [b for b in self.blocks if isinstance(b, Missing)]


def fmt(value, digits=4):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def config_text(config):
    return ", ".join(f"{k}={v}" for k, v in config.items() if k != "num_classes") if config else "-"
