"""CellPool: the llama.cpp engine's count of the cells of its unified KV cache (no model needed;
the engine's integration tests check the same count against llama.cpp's own positions)."""

from __future__ import annotations

import random

from gemmakit.engines.llamacpp import CellPool


def test_extend_and_truncate_count_cells():
    pool = CellPool(100)
    pool.extend(0, 10)
    pool.extend(0, 5)
    pool.extend(1, 7)
    assert (pool.held(0), pool.held(1), pool.used(), pool.free) == (15, 7, 22, 78)
    pool.truncate(0, 4)
    assert (pool.held(0), pool.used()) == (4, 11)
    pool.truncate(1, 0)
    assert (pool.held(1), pool.used(), pool.ids()) == (0, 4, [0])


def test_a_shared_prefix_takes_no_new_cells():
    pool = CellPool(100)
    pool.extend(0, 40)
    pool.copy(0, 1, 30)  # llama_memory_seq_cp in a unified cache: the same cells, two ids
    assert (pool.held(1), pool.used()) == (30, 40)
    pool.extend(1, 5)  # positions 30..34 of id 1 are its own cells
    assert pool.used() == 45
    # Dropping the source frees only what nobody else holds.
    assert pool.used(without={0}) == 35
    pool.truncate(0, 0)
    assert pool.used() == 35
    pool.truncate(1, 10)
    assert pool.used() == 10


def test_growing_a_truncated_source_does_not_reuse_shared_labels():
    """The source is cut below what a copy holds, then grows again: its new cells are new, not
    the copy's (which still hold positions of the old block)."""
    pool = CellPool(100)
    pool.extend(0, 20)
    pool.copy(0, 1, 20)
    pool.truncate(0, 10)
    pool.extend(0, 10)  # positions 10..19 again, computed afresh by id 0
    assert pool.used() == 30
    pool.extend(1, 1)  # the copy grows too: a block of its own
    assert pool.used() == 31
    pool.truncate(1, 0)
    assert pool.used() == 20


def _brute(ops):
    """Cells by the rule llama.cpp applies: a cell is (who computed it, position) and lives while
    any id holds it."""
    holds: dict[int, list[tuple[int, int]]] = {}
    stamp = 0
    for op, a, b, c in ops:
        if op == "extend":
            cells = holds.setdefault(a, [])
            for _ in range(b):
                stamp += 1
                cells.append((stamp, len(cells)))
        elif op == "copy":
            holds[b] = list(holds.get(a, []))[:c]
        else:
            holds[a] = holds.get(a, [])[:b]
    return len({cell for cells in holds.values() for cell in cells}), {
        k: len(v) for k, v in holds.items()}


def test_random_operations_match_a_cell_by_cell_model():
    rng = random.Random(7)
    for _ in range(200):
        pool, ops = CellPool(10_000), []
        for _ in range(40):
            r = rng.random()
            a = rng.randrange(4)
            if r < 0.5:
                ops.append(("extend", a, rng.randint(1, 9), 0))
                pool.extend(a, ops[-1][2])
            elif r < 0.7:
                b = rng.randrange(4)
                if b == a or pool.held(b):
                    continue
                n = rng.randint(0, pool.held(a))
                ops.append(("copy", a, b, n))
                pool.copy(a, b, n)
            else:
                n = rng.randint(0, pool.held(a))
                ops.append(("truncate", a, n, 0))
                pool.truncate(a, n)
        used, held = _brute(ops)
        assert pool.used() == used, ops
        assert all(pool.held(k) == v for k, v in held.items()), ops
