"""Maze generators on an n x n lattice, as pure functions of a numpy random generator (our own code: the
``maze-dataset`` package is LGPL and is neither used nor copied). Registers nothing; ``tasks/mazes.py`` tokenizes
these mazes.

- **DFS mazes** (the MLM-U paper's, made there by ``maze-dataset``'s ``gen_dfs`` with forks): a spanning tree of
  the lattice grown by the randomized iterative depth-first search (recursive backtracker): start at a random
  cell; pop a cell; if it has unvisited neighbours, push it back, carve a passage to one of them chosen uniformly
  and push that neighbour. The tree has n² - 1 passages; origin and target are two distinct random cells and the
  solution is the unique tree path between them (both ends included).
- **A* mazes** (Searchformer's, Lehnert et al. 2024): a wall fraction drawn uniformly in [0.3, 0.5], that many
  cells chosen uniformly as walls, origin and target two distinct free cells; an instance without a path is
  redrawn from the same stream. The solution is the path A* returns with the Manhattan heuristic (consistent on a
  4-connected grid of unit steps, so the path is a shortest one) and a fixed tie-break (``astar_path``).

Cells are ``(row, col)`` tuples; the neighbours of a cell come in the fixed order up, right, down, left.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

Cell = tuple[int, int]
Edge = frozenset[Cell]

WALL_FRACTION = (0.3, 0.5)
"""The range the wall fraction of an A* maze is drawn from, uniformly (Searchformer's 30-50%)."""


@dataclass(frozen=True)
class DFSMaze:
    """A spanning-tree maze: ``edges`` the n² - 1 carved passages (each an unordered pair of adjacent cells);
    ``path`` the tree path from ``origin`` to ``target``, both included."""

    n: int
    edges: frozenset[Edge]
    origin: Cell
    target: Cell
    path: tuple[Cell, ...]


@dataclass(frozen=True)
class AStarMaze:
    """A grid with wall cells; ``path`` the A* path from ``origin`` to ``target`` over free cells, both included."""

    n: int
    walls: frozenset[Cell]
    origin: Cell
    target: Cell
    path: tuple[Cell, ...]


def neighbours(cell: Cell, n: int) -> list[Cell]:
    """The in-bounds 4-neighbours of ``cell``: up, right, down, left."""
    r, c = cell
    candidates = ((r - 1, c), (r, c + 1), (r + 1, c), (r, c - 1))
    return [(i, j) for i, j in candidates if 0 <= i < n and 0 <= j < n]


def random_cell(n: int, rng: np.random.Generator) -> Cell:
    index = int(rng.integers(n * n))
    return divmod(index, n)


def dfs_spanning_tree(n: int, rng: np.random.Generator) -> frozenset[Edge]:
    """The passages of a randomized iterative DFS (with forks) over the n x n lattice: n² - 1 of them."""
    start = random_cell(n, rng)
    visited, stack, edges = {start}, [start], []
    while stack:
        cell = stack.pop()
        unvisited = [other for other in neighbours(cell, n) if other not in visited]
        if unvisited:
            stack.append(cell)
            chosen = unvisited[int(rng.integers(len(unvisited)))]
            visited.add(chosen)
            edges.append(frozenset((cell, chosen)))
            stack.append(chosen)
    return frozenset(edges)


def adjacency(edges: Iterable[Edge]) -> dict[Cell, list[Cell]]:
    """Cell -> the cells it has a passage to, each list sorted (so that searches over it are deterministic)."""
    graph: dict[Cell, list[Cell]] = {}
    for edge in edges:
        a, b = sorted(edge)
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, []).append(a)
    return {cell: sorted(others) for cell, others in graph.items()}


def bfs_path(graph: dict[Cell, list[Cell]], origin: Cell, target: Cell) -> tuple[Cell, ...] | None:
    """A shortest path from ``origin`` to ``target`` in ``graph`` (both included), None when there is none. In a
    tree it is the unique path."""
    parent: dict[Cell, Cell | None] = {origin: None}
    queue = deque([origin])
    while queue:
        cell = queue.popleft()
        if cell == target:
            return _walk_back(parent, target)
        for other in graph.get(cell, ()):
            if other not in parent:
                parent[other] = cell
                queue.append(other)
    return None


def free_grid(n: int, walls: frozenset[Cell]) -> dict[Cell, list[Cell]]:
    """The 4-connected graph of the free cells of an n x n grid with ``walls``."""
    return {(r, c): [o for o in neighbours((r, c), n) if o not in walls]
            for r in range(n) for c in range(n) if (r, c) not in walls}


def astar_path(n: int, walls: frozenset[Cell], origin: Cell, target: Cell) -> tuple[Cell, ...] | None:
    """A* from ``origin`` to ``target`` over the free cells, Manhattan heuristic; None when no path exists.

    Tie-break, fixed: the open cell expanded next has the least f = g + h, then the largest g (the one nearest
    the target), then the least raster index r·n + c; a cell's parent is the first neighbour that reached it at
    its final cost (neighbours scanned up, right, down, left). The heuristic is consistent, so the path is a
    shortest one."""
    def h(cell: Cell) -> int:
        return abs(cell[0] - target[0]) + abs(cell[1] - target[1])

    cost: dict[Cell, int] = {origin: 0}
    parent: dict[Cell, Cell | None] = {origin: None}
    heap = [(h(origin), 0, origin[0] * n + origin[1], origin)]
    closed: set[Cell] = set()
    while heap:
        _, negative_g, _, cell = heapq.heappop(heap)
        if cell in closed:
            continue
        if cell == target:
            return _walk_back(parent, target)
        closed.add(cell)
        g = -negative_g + 1
        for other in neighbours(cell, n):
            if other in walls or other in closed or g >= cost.get(other, n * n + 1):
                continue
            cost[other], parent[other] = g, cell
            heapq.heappush(heap, (g + h(other), -g, other[0] * n + other[1], other))
    return None


def _walk_back(parent: dict[Cell, Cell | None], target: Cell) -> tuple[Cell, ...]:
    path, cell = [target], parent[target]
    while cell is not None:
        path.append(cell)
        cell = parent[cell]
    return tuple(reversed(path))


def dfs_maze(n: int, rng: np.random.Generator) -> DFSMaze:
    """A DFS spanning-tree maze with a random origin and a distinct random target (module docstring)."""
    edges = dfs_spanning_tree(n, rng)
    first, second = (divmod(int(i), n) for i in rng.choice(n * n, size=2, replace=False))
    path = bfs_path(adjacency(edges), first, second)
    assert path is not None  # a spanning tree connects every pair of cells
    return DFSMaze(n=n, edges=edges, origin=first, target=second, path=path)


def astar_maze(n: int, rng: np.random.Generator) -> AStarMaze:
    """An A* maze (module docstring): random walls, two distinct free cells joined by a path, its A* path."""
    while True:
        count = round(float(rng.uniform(*WALL_FRACTION)) * n * n)
        cells = [divmod(int(i), n) for i in rng.permutation(n * n)]
        walls, (origin, target) = frozenset(cells[:count]), cells[count:count + 2]
        path = astar_path(n, walls, origin, target)
        if path is not None:
            return AStarMaze(n=n, walls=walls, origin=origin, target=target, path=path)
