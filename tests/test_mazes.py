"""The maze task's oracles: every DFS maze is a spanning tree of its lattice and its path the unique tree path; every
A* path is a shortest path (checked against a breadth-first search written here) with the documented tie-break;
tokenization round-trips; the supervision layout of both objectives; the metrics; determinism and refusals."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import torch

from longseq.tasks import IGNORE_INDEX, TaskParameterError, build_task
from longseq.tasks.maze_gen import AStarMaze, DFSMaze, astar_maze, astar_path, dfs_maze
from longseq.tasks.mazes import (
    FIRST_CELL_ID,
    ID,
    MASK_ID,
    PAD_ID,
    max_length,
    parse,
    tokenize,
    words,
)

SIZES = (3, 4, 5, 8)


def _adjacent(a, b) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


def _components(cells, edges) -> int:
    """Union-find over ``cells``; raises on an edge that closes a cycle, returns the number of components."""
    parent = {c: c for c in cells}

    def root(c):
        while parent[c] != c:
            c = parent[c]
        return c

    for a, b in edges:
        ra, rb = root(a), root(b)
        assert ra != rb, f"passage {a}-{b} closes a cycle"
        parent[ra] = rb
    return len({root(c) for c in cells})


def _simple_paths(graph, origin, target, seen=()):
    """Every simple path from origin to target (exhaustive; small grids only)."""
    if origin == target:
        return 1
    return sum(_simple_paths(graph, nxt, target, (*seen, origin)) for nxt in graph[origin] if nxt not in seen)


def _bfs_distance(n, walls, origin, target):
    dist = {origin: 0}
    queue = deque([origin])
    while queue:
        r, c = queue.popleft()
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n and nxt not in walls and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist.get(target)


@pytest.mark.parametrize("n", SIZES)
def test_every_dfs_maze_is_a_spanning_tree_and_its_path_the_unique_tree_path(n):
    task = build_task("maze", kind="dfs", grid=n)
    cells = [(r, c) for r in range(n) for c in range(n)]
    for index in range(12):
        maze, _ = task.maze("train", index)
        assert isinstance(maze, DFSMaze)
        edges = [tuple(edge) for edge in maze.edges]
        assert len(edges) == n * n - 1
        assert all(len(e) == 2 and _adjacent(*e) and all(0 <= x < n for cell in e for x in cell) for e in edges)
        assert _components(cells, edges) == 1  # connected, and acyclic (no passage closed a cycle)
        path = maze.path
        assert path[0] == maze.origin and path[-1] == maze.target and maze.origin != maze.target
        assert all(frozenset(step) in maze.edges for step in itertools.pairwise(path))
        assert len(set(path)) == len(path)
        if n <= 4:  # the path is the only simple path between its ends
            graph = {c: [o for e in maze.edges if c in e for o in e if o != c] for c in cells}
            assert _simple_paths(graph, maze.origin, maze.target) == 1


@pytest.mark.parametrize("n", SIZES)
def test_every_astar_path_is_a_shortest_path_over_free_cells(n):
    task = build_task("maze", kind="astar", grid=n)
    for index in range(12):
        maze, _ = task.maze("test", index)
        assert isinstance(maze, AStarMaze)
        assert round(0.3 * n * n) <= len(maze.walls) <= round(0.5 * n * n)
        path = maze.path
        assert path[0] == maze.origin and path[-1] == maze.target and maze.origin != maze.target
        assert not set(path) & maze.walls
        assert all(_adjacent(a, b) for a, b in itertools.pairwise(path))
        assert len(path) - 1 == _bfs_distance(n, maze.walls, maze.origin, maze.target)


def test_astar_tie_break_on_an_empty_grid_is_the_documented_one():
    """Derived by hand from the rule (least f, then largest g, then least raster index): from (0,0) to (2,2) every
    monotone path is shortest; A* goes right first, along the top row, then down the last column."""
    assert astar_path(3, frozenset(), (0, 0), (2, 2)) == ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2))
    assert astar_path(3, frozenset({(0, 1), (1, 1), (2, 1)}), (0, 0), (0, 2)) is None
    # With a wall in the way the path detours by the shortest way: down the left column, along the bottom row.
    walls = frozenset({(0, 1), (1, 1)})
    assert astar_path(3, walls, (0, 0), (0, 2)) == ((0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2))


@pytest.mark.parametrize("kind", ["dfs", "astar"])
@pytest.mark.parametrize("n", SIZES)
def test_tokenization_round_trips(kind, n):
    task = build_task("maze", kind=kind, grid=n)
    inputs, _ = task.batch("train", range(8))
    for row, index in enumerate(range(8)):
        maze, tokens = task.maze("train", index)
        assert parse(tokens, n) == maze
        assert parse(inputs[row].tolist(), n) == maze  # the padded row too
        assert inputs[row, : len(tokens)].tolist() == tokens and bool((inputs[row, len(tokens):] == PAD_ID).all())
        assert MASK_ID not in tokens
    generator = dfs_maze if kind == "dfs" else astar_maze
    maze = generator(n, np.random.default_rng(7))
    assert parse(tokenize(maze, np.random.default_rng(1)), n) == maze


def test_the_adjacency_list_is_shuffled_in_order_and_direction():
    task = build_task("maze", grid=5)
    forward = backward = unsorted = 0
    for index in range(4):
        _, tokens = task.maze("train", index)
        end = tokens.index(ID["<ADJLIST_END>"])
        pairs = [tuple(tokens[i:i + 2]) for i in range(1, end, 3)]
        assert all(tokens[i + 2] == ID[";"] for i in range(1, end, 3))
        forward += sum(a < b for a, b in pairs)
        backward += sum(a > b for a, b in pairs)
        unsorted += pairs != sorted(pairs)
    assert forward > 10 and backward > 10 and unsorted == 4


def test_the_worked_example_and_word_forms():
    maze = DFSMaze(n=3, edges=frozenset(frozenset(e) for e in [
        ((0, 0), (0, 1)), ((0, 1), (0, 2)), ((0, 2), (1, 2)), ((1, 2), (1, 1)), ((1, 1), (1, 0)), ((1, 0), (2, 0)),
        ((2, 0), (2, 1)), ((2, 1), (2, 2))]), origin=(0, 1), target=(1, 1), path=((0, 1), (0, 2), (1, 2), (1, 1)))
    text = words(tokenize(maze, np.random.default_rng(0)), 3)
    assert len(text) == max_length("dfs", 3) - (9 - 4)  # a path of 4 cells where the longest has 9
    assert text[-12:] == ["<ORIGIN_START>", "(0,1)", "<ORIGIN_END>", "<TARGET_START>", "(1,1)", "<TARGET_END>",
                          "<PATH_START>", "(0,1)", "(0,2)", "(1,2)", "(1,1)", "<PATH_END>"]
    assert words([FIRST_CELL_ID + 3 * 2 + 1], 3) == ["(2,1)"] and words([PAD_ID, MASK_ID], 3) == ["[PAD]", "[MASK]"]


@pytest.mark.parametrize("kind", ["dfs", "astar"])
def test_seq_len_is_the_longest_sequence(kind):
    """The longest mazes reach seq_len exactly: dfs, a snake through every cell (the path visits all n² cells);
    astar, every cell a wall or a path cell."""
    n = 4
    snake = [(r, c if r % 2 == 0 else n - 1 - c) for r in range(n) for c in range(n)]
    if kind == "dfs":
        maze = DFSMaze(n=n, edges=frozenset(frozenset(p) for p in itertools.pairwise(snake)), origin=snake[0],
                       target=snake[-1], path=tuple(snake))
    else:  # every cell not on the path is a wall
        path = tuple(snake[:6])
        maze = AStarMaze(n=n, walls=frozenset(snake[6:]), origin=path[0], target=path[-1], path=path)
    task = build_task("maze", kind=kind, grid=n)
    assert len(tokenize(maze, np.random.default_rng(0))) == task.seq_len == max_length(kind, n)


def test_labels_of_the_two_objectives():
    mlmu = build_task("maze", grid=5, objective="mlmu")
    next_token = build_task("maze", grid=5, objective="next_token")
    inputs, labels = mlmu.batch("test", range(6))
    inputs_nt, labels_nt = next_token.batch("test", range(6))
    assert torch.equal(inputs, inputs_nt)  # the same sequences; only the supervision differs
    for row in range(6):
        tokens = inputs[row][inputs[row] != PAD_ID].tolist()
        start = tokens.index(ID["<PATH_START>"]) + 1
        path = list(range(start, len(tokens)))  # the path cells and <PATH_END>
        assert torch.nonzero(labels[row] != IGNORE_INDEX)[:, 0].tolist() == path
        assert labels[row, path].tolist() == tokens[start:]
        shifted = [p - 1 for p in path]
        assert torch.nonzero(labels_nt[row] != IGNORE_INDEX)[:, 0].tolist() == shifted
        assert labels_nt[row, shifted].tolist() == tokens[start:]
        assert tokens[-1] == ID["<PATH_END>"]


def test_full_and_token_accuracy():
    predictions = torch.tensor([5, 6, 7, 5, 0, 7, 1])
    targets = torch.tensor([5, 6, 7, 5, 6, 7, 1])
    example_index = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    full = build_task("maze").score(predictions, targets, example_index, 3)
    token = build_task("maze", metric="token_acc").score(predictions, targets, example_index, 3)
    assert torch.equal(full, torch.tensor([1.0, 0.0, 1.0]))
    assert torch.allclose(token, torch.tensor([1.0, 2 / 3, 1.0]))
    assert build_task("maze").metric_name == "full_acc"
    assert build_task("maze", metric="token_acc").metric_name == "token_acc"


def test_examples_are_deterministic_and_the_vocabulary_is_fixed():
    task = build_task("maze", kind="astar", grid=6, seed=3)
    again = build_task(**task.describe())
    for a, b in zip(task.batch("train", [4, 9]), again.batch("train", [9, 4]), strict=True):
        assert torch.equal(a, b[[1, 0]])
    assert task.vocab_size == 13 + 36 == FIRST_CELL_ID + 36
    assert build_task("maze", grid=6, objective="next_token").vocab_size == task.vocab_size


@pytest.mark.parametrize(("params", "message"), [
    ({"grid": 2}, r"grid=2: .*greater than or equal to 3"),
    ({"grid": 31}, r"grid=31: .*less than or equal to 30"),
    ({"kind": "prim"}, r"kind='prim'"),
    ({"objective": "ar"}, r"objective='ar'"),
    ({"metric": "acc"}, r"metric='acc'"),
])
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(TaskParameterError, match=message):
        build_task("maze", **params)


def test_parse_names_the_token_out_of_place():
    task = build_task("maze", grid=3)
    _, tokens = task.maze("train", 0)
    with pytest.raises(ValueError, match=r"expected <PATH_END>, found the end"):
        parse(tokens[:-1], 3)
    with pytest.raises(ValueError, match=r"token 3: expected ;"):
        parse([*tokens[:3], ID["<PATH_END>"], *tokens[4:]], 3)
