"""Pieces of the offline SVG charts that the analysis and benchmark reports share."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    """The chart's size and the margins around its plot area, in pixels."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int


def axes(frame: Frame, xticks: Iterable[tuple[float, str]], yticks: Iterable[tuple[float, str]],
         xlabel: str, ylabel: str) -> list[str]:
    """Grid lines with tick labels at (pixel, text) positions, both axes and their labels."""
    f = frame
    bottom, right = f.height - f.bottom, f.width - f.right
    parts = []
    for px, text in xticks:
        parts.append(f'<line class="gridline" x1="{px:.1f}" y1="{f.top}" x2="{px:.1f}" y2="{bottom}"/>')
        parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{text}</text>')
    for py, text in yticks:
        parts.append(f'<line class="gridline" x1="{f.left}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}"/>')
        parts.append(f'<text x="{f.left - 6}" y="{py + 4:.1f}" text-anchor="end">{text}</text>')
    parts.append(f'<line class="axis" x1="{f.left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>')
    parts.append(f'<line class="axis" x1="{f.left}" y1="{f.top}" x2="{f.left}" y2="{bottom}"/>')
    parts.append(f'<text x="{(f.left + right) / 2}" y="{f.height - 12}" text-anchor="middle">'
                 f'{html.escape(xlabel)}</text>')
    parts.append(f'<text transform="translate(16 {(f.top + bottom) / 2}) rotate(-90)" text-anchor="middle">'
                 f'{html.escape(ylabel)}</text>')
    return parts


def ticks(scale: Callable[[float], float], values: Iterable[float], label: Callable[[float], str]
          ) -> list[tuple[float, str]]:
    return [(scale(v), label(v)) for v in values]
