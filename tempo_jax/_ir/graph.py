"""Cycles of a graph (of ops, of statements): the strongly connected components that hold
a recurrence."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

N = TypeVar("N", bound=Hashable)


def cyclic_components(succ: Mapping[N, Sequence[N]]) -> list[set[N]]:
    """The strongly connected components of the graph ``succ`` (node -> the nodes its edges
    reach; every node a key) with more than one node or a self-edge (Tarjan's algorithm,
    iterative)."""
    index: dict[N, int] = {}
    low: dict[N, int] = {}
    stack: list[N] = []
    on: set[N] = set()
    found: list[set[N]] = []
    for root in succ:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in succ[node]:
                        found.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on.add(child)
                work.append((child, iter(succ[child])))
            elif child in on:
                low[node] = min(low[node], index[child])
    return found
