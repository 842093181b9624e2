"""Styles shared by the project's plots: one colour and line style per series that stay distinct for
every option of the largest stage (15 strategy subsets), and a legend outside the axes."""

from __future__ import annotations

from typing import Any

# tab10, then five more colours far from it and from each other (no reuse below 15 series).
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#000000", "#b8860b", "#00ced1", "#800000", "#4b0082",
)  # fmt: skip
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = "osD^v<>Px*hpX8d"


def series_style(i: int) -> dict[str, Any]:
    """Colour, line style and marker of series i: the colour alone tells 15 series apart, the line
    style and marker tell neighbours apart in greyscale or for colour-blind readers."""
    return {
        "color": COLOURS[i % len(COLOURS)],
        "linestyle": LINE_STYLES[i % len(LINE_STYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def legend_outside(
    ax: Any, handles: list[Any] | None = None, labels: list[str] | None = None, title: str | None = None
) -> None:
    """The legend right of the axes, so that it covers no data (files.save_figure keeps it in the PNG)."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(
        handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
        frameon=False, title=title, title_fontsize=7,
    )  # fmt: skip
