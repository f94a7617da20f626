"""Hypothesis strategies the fuzz tests share: JSON values of every shape."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_scalars(integers: st.SearchStrategy[int] | None = None) -> st.SearchStrategy[Any]:
    """null, booleans, integers (``integers``, default any), finite floats, short text."""
    return (
        st.none()
        | st.booleans()
        | (st.integers() if integers is None else integers)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=20)
    )


def json_values(
    integers: st.SearchStrategy[int] | None = None, max_leaves: int = 20
) -> st.SearchStrategy[Any]:
    """Any JSON value: scalars, and lists and objects of them, nested, small."""
    return st.recursive(
        json_scalars(integers),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
