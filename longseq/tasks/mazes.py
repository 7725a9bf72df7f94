"""Maze navigation (MLM-U, Nolte, Kitouni et al. 2024, arXiv 2412.05117; spec ``tasks.md`` §1e): read a maze, an
origin and a target, write the path.

Mazes come from ``tasks/maze_gen.py`` (our own generators): ``kind="dfs"``, spanning trees of the n x n lattice
grown by randomized DFS, whose path is unique; ``kind="astar"``, grids with 30-50% random walls, whose path is A*'s
(shortest, with a fixed tie-break). One example is one maze, tokenized with every coordinate ``(r,c)`` as a single
token (maze-dataset's ``AOTP_UT_rasterized`` without its ``<-->`` connectors, as MLM-U feeds it)::

    dfs:   <ADJLIST_START> a b ; a b ; ... <ADJLIST_END> <ORIGIN_START> o <ORIGIN_END> <TARGET_START> t <TARGET_END>
           <PATH_START> p1 ... pk <PATH_END>
    astar: <WALLS_START> w ... w <WALLS_END> <ORIGIN_START> o <ORIGIN_END> <TARGET_START> t <TARGET_END>
           <PATH_START> p1 ... pk <PATH_END>

- The adjacency list holds the n² - 1 passages, each as ``a b ;``; both the order of the passages and the
  direction within each passage are shuffled. The walls of an A* maze come in shuffled order too (Searchformer
  lists ``wall x y`` items; here a wall is one token).
- The path runs from the origin ``p1 = o`` to the target ``pk = t``, both included.
- Token ids: 0 ``[PAD]``, 1 ``[MASK]``, then ``SPECIALS`` in order (2 ``;`` .. 12 ``<PATH_END>``), then the n²
  coordinates in raster order (``(r,c)`` is ``13 + r·n + c``); ``vocab_size = 13 + n²`` for both kinds and both
  objectives, so the two models of a comparison have the same embedding table. ``[MASK]`` appears only in what the
  MLM-U model feeds its encoder.
- Rows are right-padded with ``[PAD]`` to ``seq_len``, the longest possible sequence: ``3(n²-1) + 9 + n² + 1`` for
  dfs (a path can visit every cell), ``n² + 10`` for astar (walls and path cells are distinct cells).

Worked example (dfs, n = 3; a maze whose passages are (0,0)-(0,1), (0,1)-(0,2), (0,2)-(1,2), (1,2)-(1,1),
(1,1)-(1,0), (1,0)-(2,0), (2,0)-(2,1), (2,1)-(2,2); origin (0,1), target (1,1)), in words::

    <ADJLIST_START> (1,1) (1,2) ; (0,0) (0,1) ; (2,1) (2,0) ; ... <ADJLIST_END> <ORIGIN_START> (0,1) <ORIGIN_END>
    <TARGET_START> (1,1) <TARGET_END> <PATH_START> (0,1) (0,2) (1,2) (1,1) <PATH_END> [PAD] ...

**Supervision** (``objective``), on the k + 1 path tokens ``p1 .. pk <PATH_END>``:

- ``"mlmu"``: ``labels[j] = inputs[j]`` at each path position j: the MLM-U model (``models/mlmu.py``) hides a random
  subset of them in training and predicts the hidden ones; it never sees the rest of the labels.
- ``"next_token"``: ``labels[j - 1] = inputs[j]``: a causal LM predicts each path token from the tokens before it.

The task declares its ``objective``; ``train.experiment.build_model`` builds the MLM-U encoder-decoder or the
next-token causal LM from it, and both evaluate by **decoding the path left to right** (greedy; the path length is
the ground truth's, as in the paper: positions are decoded up to it).

**Metric** (``metric``): ``"full_acc"`` (the paper's headline), 1 when every path token is right, else 0; or
``"token_acc"``, the fraction of the path tokens that are right (the paper's ``acc``). A suite gets both from one
training run by scoring the trained model again with ``eval: [{metric: token_acc}]`` (recorded as
``token_acc@metric=token_acc``).

Each example is a pure function of ``(seed, split, index)``: its maze and its shuffles are drawn from
``base.example_rng``. Train and test mazes are independent draws (identical mazes may occur on the smallest grids).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from longseq.tasks._tokens import PositiveInt, Seed, SyntheticTokenTask
from longseq.tasks.base import IGNORE_INDEX, per_example_accuracy, register_task
from longseq.tasks.maze_gen import AStarMaze, Cell, DFSMaze, astar_maze, dfs_maze

PAD, MASK = "[PAD]", "[MASK]"
SPECIALS: tuple[str, ...] = (
    ";", "<ADJLIST_START>", "<ADJLIST_END>", "<WALLS_START>", "<WALLS_END>", "<ORIGIN_START>", "<ORIGIN_END>",
    "<TARGET_START>", "<TARGET_END>", "<PATH_START>", "<PATH_END>",
)
WORDS: tuple[str, ...] = (PAD, MASK, *SPECIALS)
"""The words before the coordinates; a word's id is its index."""
PAD_ID, MASK_ID = 0, 1
FIRST_CELL_ID = len(WORDS)
ID = {word: index for index, word in enumerate(WORDS)}

Maze = DFSMaze | AStarMaze
GridSize = Annotated[int, Field(ge=3, le=30)]


def cell_id(cell: Cell, n: int) -> int:
    return FIRST_CELL_ID + cell[0] * n + cell[1]


def id_cell(token: int, n: int) -> Cell:
    if not FIRST_CELL_ID <= token < FIRST_CELL_ID + n * n:
        raise ValueError(f"token {token} is not a coordinate of an {n}x{n} grid (allowed: "
                         f"{FIRST_CELL_ID}..{FIRST_CELL_ID + n * n - 1})")
    return divmod(token - FIRST_CELL_ID, n)


def words(tokens: Sequence[int], n: int) -> list[str]:
    """Token ids -> words (``(r,c)`` for coordinates), for reading examples and predictions."""
    return [WORDS[t] if t < FIRST_CELL_ID else "({},{})".format(*id_cell(t, n)) for t in tokens]


def tokenize(maze: Maze, rng: np.random.Generator) -> list[int]:
    """The token ids of ``maze`` (module docstring), shuffling its passages (or walls) with ``rng``."""
    n = maze.n
    if isinstance(maze, DFSMaze):
        passages = sorted(tuple(sorted(edge)) for edge in maze.edges)  # a canonical order, then shuffled
        body = [ID["<ADJLIST_START>"]]
        for index in rng.permutation(len(passages)):
            a, b = passages[index]
            if rng.integers(2):
                a, b = b, a
            body += [cell_id(a, n), cell_id(b, n), ID[";"]]
        body.append(ID["<ADJLIST_END>"])
    else:
        walls = sorted(maze.walls)
        body = [ID["<WALLS_START>"], *(cell_id(walls[i], n) for i in rng.permutation(len(walls))), ID["<WALLS_END>"]]
    return [*body, ID["<ORIGIN_START>"], cell_id(maze.origin, n), ID["<ORIGIN_END>"], ID["<TARGET_START>"],
            cell_id(maze.target, n), ID["<TARGET_END>"], ID["<PATH_START>"], *(cell_id(c, n) for c in maze.path),
            ID["<PATH_END>"]]


def parse(tokens: Sequence[int], n: int) -> Maze:
    """The maze a token sequence describes (trailing ``[PAD]`` ignored): the inverse of ``tokenize`` up to the
    shuffles. Raises ``ValueError`` naming the first token out of place."""
    stream = [int(t) for t in tokens]
    while stream and stream[-1] == PAD_ID:
        stream.pop()
    position = 0

    def expect(word: str) -> None:
        nonlocal position
        if position >= len(stream) or stream[position] != ID[word]:
            found = words(stream[position:position + 1], n) or ["the end"]
            raise ValueError(f"token {position}: expected {word}, found {found[0]}")
        position += 1

    def cell() -> Cell:
        nonlocal position
        if position >= len(stream):
            raise ValueError(f"token {position}: expected a coordinate, found the end")
        position += 1
        return id_cell(stream[position - 1], n)

    def cells_until(word: str, group: int) -> list[tuple[Cell, ...]]:
        nonlocal position
        items = []
        while position < len(stream) and stream[position] != ID[word]:
            items.append(tuple(cell() for _ in range(group)))
            if group == 2:
                expect(";")
        expect(word)
        return items

    kind = "dfs" if stream[:1] == [ID["<ADJLIST_START>"]] else "astar"
    expect("<ADJLIST_START>" if kind == "dfs" else "<WALLS_START>")
    items = cells_until("<ADJLIST_END>" if kind == "dfs" else "<WALLS_END>", 2 if kind == "dfs" else 1)
    expect("<ORIGIN_START>")
    origin = cell()
    expect("<ORIGIN_END>")
    expect("<TARGET_START>")
    target = cell()
    expect("<TARGET_END>")
    expect("<PATH_START>")
    path = tuple(group[0] for group in cells_until("<PATH_END>", 1))
    if position != len(stream):
        raise ValueError(f"token {position}: expected the end after <PATH_END>, found {words(stream[position:], n)[0]}")
    if kind == "dfs":
        edges = frozenset(frozenset(pair) for pair in items)
        return DFSMaze(n=n, edges=edges, origin=origin, target=target, path=path)
    return AStarMaze(n=n, walls=frozenset(group[0] for group in items), origin=origin, target=target, path=path)


def max_length(kind: str, n: int) -> int:
    """The longest sequence of a maze of ``kind`` on an n x n grid (module docstring)."""
    return 3 * (n * n - 1) + 9 + n * n + 1 if kind == "dfs" else n * n + 10


@register_task("maze")
class MazeNavigation(SyntheticTokenTask):
    """Maze navigation (MLM-U, Nolte, Kitouni et al. 2024): DFS or A* mazes on an n x n grid, write the path.

    ``kind``: ``dfs`` (spanning trees, unique path) or ``astar`` (random walls, A*'s shortest path). ``grid``: n,
    3-30 (the paper: 5, 10, 20, 30; 3 and 4 in its small experiments). ``objective``: ``mlmu`` (the MLM-U
    encoder-decoder, labels on the path tokens themselves) or ``next_token`` (a causal LM, labels shifted by one).
    ``metric``: ``full_acc`` (whole path right) or ``token_acc``. Defaults follow the paper: 100k training mazes, a
    test set of 2,000 (its validation split is min(ceil(0.2 N), 2000)). Token layout: the module docstring.
    """

    name = "maze"
    higher_is_better = True
    pad_id = PAD_ID
    mask_id = MASK_ID

    def __init__(
        self,
        *,
        kind: Literal["dfs", "astar"] = "dfs",
        grid: GridSize = 5,
        objective: Literal["mlmu", "next_token"] = "mlmu",
        metric: Literal["full_acc", "token_acc"] = "full_acc",
        num_train: PositiveInt = 100_000,
        num_test: PositiveInt = 2_000,
        seed: Seed = 0,
    ) -> None:
        self.kind, self.grid, self.objective, self.metric = kind, grid, objective, metric
        self.num_train, self.num_test, self.seed = num_train, num_test, seed
        self.metric_name = metric
        self.vocab_size = FIRST_CELL_ID + grid * grid
        self.seq_len = max_length(kind, grid)

    def maze(self, split: str, index: int) -> tuple[Maze, list[int]]:
        """Example ``index`` of ``split``: its maze and its token ids (unpadded)."""
        _, streams = self.example_rngs(split, [index])
        return self._generate(next(streams)[1])

    def _generate(self, rng: np.random.Generator) -> tuple[Maze, list[int]]:
        maze = dfs_maze(self.grid, rng) if self.kind == "dfs" else astar_maze(self.grid, rng)
        return maze, tokenize(maze, rng)

    def batch(self, split: str, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """``inputs: (B, seq_len) int64`` right-padded with ``[PAD]``; ``labels``: the path tokens (and
        ``<PATH_END>``) at their own positions (``mlmu``) or one position earlier (``next_token``), -100 elsewhere."""
        rows, streams = self.example_rngs(split, indices)
        inputs = torch.full((rows.size, self.seq_len), PAD_ID, dtype=torch.int64)
        labels = torch.full((rows.size, self.seq_len), IGNORE_INDEX, dtype=torch.int64)
        shift = 0 if self.objective == "mlmu" else 1
        for row, rng in streams:
            _, tokens = self._generate(rng)
            start = tokens.index(ID["<PATH_START>"]) + 1
            inputs[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, start - shift : len(tokens) - shift] = inputs[row, start:len(tokens)]
        return inputs, labels

    def score(self, predictions: Tensor, targets: Tensor, example_index: Tensor, batch_size: int) -> Tensor:
        """Per-example ``full_acc`` (1 when every path token is right) or ``token_acc`` ``(batch_size,)``."""
        accuracy = per_example_accuracy(predictions, targets, example_index, batch_size)
        # A mean of 0/1 values is exactly 1.0 only when all are 1 (counts are far below float32's 2^24).
        return accuracy if self.metric == "token_acc" else (accuracy == 1).to(accuracy.dtype)
