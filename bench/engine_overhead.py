"""Engine overhead per node (validate + execute) on chains and trees of trivial IntMath nodes.

    python bench/engine_overhead.py [--sizes 1000 10000 100000] [--repeat 3]

Prints microseconds per node for: a cold run (empty cache), a fully cached re-run, and re-runs
with one literal changed at the start and at the end of the graph; plus the growth ratio from the
smallest to the largest size (1.0 = linear). Goals: linear growth, under 50 us/node cold, under
10 us/node when only the last node changes.
"""

from __future__ import annotations

import argparse
import copy
import gc
import time
from collections.abc import Callable
from typing import Any

import nodes.utility
from nodegraph.cache import Cache
from nodegraph.executor import Executor
from nodegraph.registry import Registry

Workflow = dict[str, Any]


def chain(size: int) -> tuple[Workflow, str, str]:
    """size IntMath nodes in a line; returns (workflow, first node, last node)."""
    wf: Workflow = {"0": {"class_type": "IntMath", "inputs": {"a": 0, "b": 1, "op": "add"}}}
    for i in range(1, size):
        wf[str(i)] = {
            "class_type": "IntMath",
            "inputs": {"a": [str(i - 1), 0], "b": 1, "op": "add"},
        }
    wf["out"] = {"class_type": "ShowValue", "inputs": {"value": [str(size - 1), 0]}}
    return wf, "0", str(size - 1)


def tree(size: int) -> tuple[Workflow, str, str]:
    """A binary tree of size IntMath nodes (leaves hold literals); returns (wf, a leaf, root)."""
    wf: Workflow = {}
    leaves = (size + 1) // 2
    level = []
    for i in range(leaves):
        wf[f"l{i}"] = {"class_type": "IntMath", "inputs": {"a": i, "b": 1, "op": "add"}}
        level.append(f"l{i}")
    n = 0
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            node_id = f"t{n}"
            n += 1
            wf[node_id] = {
                "class_type": "IntMath",
                "inputs": {"a": [level[j], 0], "b": [level[j + 1], 0], "op": "max"},
            }
            nxt.append(node_id)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    wf["out"] = {"class_type": "ShowValue", "inputs": {"value": [level[0], 0]}}
    return wf, "l0", level[0]


def timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(
    shape: Callable[[int], tuple[Workflow, str, str]], size: int, repeat: int
) -> dict[str, float]:
    registry = Registry()
    registry.register_module(nodes.utility)
    wf, first, last = shape(size)
    total = len(wf)

    def cold() -> None:
        result = Executor(registry, Cache()).run(wf)
        assert result.ok and len(result.executed) == total

    executor = Executor(registry, Cache())
    executor.run(wf)

    def cached() -> None:
        result = executor.run(wf)
        assert result.executed == []

    def changed(node_id: str) -> Callable[[], None]:
        variants = []
        for k in range(repeat):
            variant = copy.deepcopy(wf)
            variant[node_id]["inputs"]["op"] = ("sub", "mul", "min", "add", "max")[k % 5]
            variants.append(variant)
        it = iter(variants)

        def run() -> None:
            result = executor.run(next(it))
            assert result.ok and result.executed

        return run

    return {
        "cold": timed(cold, repeat) / total * 1e6,
        "cached": timed(cached, repeat) / total * 1e6,
        "change first": timed(changed(first), repeat) / total * 1e6,
        "change last": timed(changed(last), repeat) / total * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'shape':<6} {'nodes':>8} {'cold':>9} {'cached':>9} {'chg first':>10} {'chg last':>9}"
        "   (microseconds per node, best of %d)" % args.repeat
    )
    for name, shape in (("chain", chain), ("tree", tree)):
        rows = {}
        for size in args.sizes:
            r = measure(shape, size, args.repeat)
            rows[size] = r
            print(
                f"{name:<6} {size:>8} {r['cold']:>9.2f} {r['cached']:>9.2f} "
                f"{r['change first']:>10.2f} {r['change last']:>9.2f}"
            )
        small, large = rows[min(rows)], rows[max(rows)]
        growth = {k: large[k] / small[k] for k in small}
        print(
            f"{name:<6} growth per node {min(rows)} -> {max(rows)}: "
            + ", ".join(f"{k} x{v:.2f}" for k, v in growth.items())
            + "  (1.00 = linear)"
        )


if __name__ == "__main__":
    main()
