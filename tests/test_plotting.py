"""Plot styles (peftds.plotting): every option of the largest stage keeps its own look."""

import itertools

from peftds.plotting import series_style
from peftds.search.report import opts_drawn

LARGEST_STAGE = 15  # the strategy stages: every non-empty subset of 4 strategies


def test_fifteen_series_have_distinct_colours_and_neighbours_distinct_line_styles():
    styles = [series_style(i) for i in range(LARGEST_STAGE)]
    assert len({s["color"] for s in styles}) == LARGEST_STAGE
    for a, b in itertools.pairwise(styles):
        assert a["linestyle"] != b["linestyle"] and a["marker"] != b["marker"]


def test_the_winner_is_drawn_last_so_no_tied_curve_hides_it():
    order = ["A", "P", "B", "L", "A+P"]
    assert opts_drawn(order, "B")[-1] == "B"
    assert opts_drawn(order, "B")[:-1] == ["A", "P", "L", "A+P"]
    assert opts_drawn(order, None) == order
