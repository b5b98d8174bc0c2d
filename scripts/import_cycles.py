"""Import circles between modules of engine and tui, imports inside functions included.

    python scripts/import_cycles.py

Builds the import graph with grimp (installed with import-linter) and finds its strongly
connected components (Tarjan): every component of more than one module, or a module importing
itself, is a circle. Exit 1 printing each circle, else 0 with one line. import-linter's
acyclic_siblings contract checks siblings package by package; this checks every module pair.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Set
from pathlib import Path

import grimp

PACKAGES = ("engine", "tui")


def import_graph(packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports (anywhere in its code)."""
    graph = grimp.build_graph(*packages, cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}


def strongly_connected(graph: Mapping[str, Set[str]]) -> Iterator[list[str]]:
    """Tarjan's components, iteratively (no recursion limit), each sorted by name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                yield sorted(component)


def cycles(graph: Mapping[str, Set[str]]) -> list[list[str]]:
    """The components that are circles: two or more modules, or one importing itself."""
    found = [c for c in strongly_connected(graph) if len(c) > 1 or c[0] in graph[c[0]]]
    return sorted(found)


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages
    graph = import_graph()
    found = cycles(graph)
    for component in found:
        members = set(component)
        print(f"import cycle among {len(component)} modules:")
        for module in component:
            print(f"  {module} -> {', '.join(sorted(graph[module] & members))}")
    if found:
        return 1
    print(f"no import cycles among {len(graph)} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
