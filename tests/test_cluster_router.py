"""The cluster router's policy on its own (no Ray): affinity, deferral, spreading, models,
exclusions, lost workers; the store's side of dispatching."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from server.cluster import ClusterConfig, ClusterError
from server.cluster.connect import check_room
from server.cluster.router import SLOTS, Needs, Router
from server.store import _SCHEMA, SUCCESS, Outcome, Store

from .server_fixtures import REPO, http, show

TXT2IMG = frozenset({"ckpt", "pos", "neg", "empty", "sample", "decode"})


def img2img(value: str) -> Needs:
    """A sweep value: the txt2img part plus its own cone."""
    return Needs(TXT2IMG | {f"refine-{value}", f"save-{value}"}, frozenset({"model.safetensors"}))


def other(name: str) -> Needs:
    return Needs(frozenset({f"{name}-a", f"{name}-b"}))


def test_a_job_goes_where_its_upstream_is_cached() -> None:
    router = Router(["w0", "w1"])
    router.report("w1", TXT2IMG, ())
    (placed,) = router.assign([("p1", img2img("0.3"))])
    assert (placed.worker, placed.reason, placed.affinity) == ("w1", "affinity", len(TXT2IMG))


def test_upstream_being_computed_counts_as_held() -> None:
    router = Router(["w0", "w1"])
    placed = router.assign([("t2i", Needs(TXT2IMG)), ("v1", img2img("0.3"))])
    assert [(a.prompt_id, a.worker) for a in placed] == [("t2i", "w0"), ("v1", "w0")]
    assert placed[1].reason == "affinity"


def test_a_job_waits_for_its_full_worker_while_others_take_other_work() -> None:
    router = Router(["w0", "w1"])
    router.report("w0", TXT2IMG, ())
    queued = [("v1", img2img("1")), ("v2", img2img("2")), ("v3", img2img("3")),
              ("u1", other("u1")), ("u2", other("u2"))]  # fmt: skip
    placed = {a.prompt_id: a for a in router.assign(queued)}
    assert {p: a.worker for p, a in placed.items()} == {"v1": "w0", "v2": "w0", "u1": "w1",
                                                         "u2": "w1"}  # fmt: skip
    assert "v3" not in placed  # deferred: it waits for w0, which holds its upstream
    router.finished("w0", "v1")
    (next_one,) = router.assign([("v3", img2img("3"))])
    assert (next_one.worker, next_one.reason) == ("w0", "affinity")


def test_an_idle_worker_takes_a_deferred_job_when_nothing_else_is_queued() -> None:
    router = Router(["w0", "w1"])
    router.report("w0", TXT2IMG, ())
    sweep = [(f"v{i}", img2img(str(i))) for i in range(5)]
    placed = router.assign(sweep)
    where = {a.prompt_id: (a.worker, a.reason) for a in placed}
    assert where["v0"] == ("w0", "affinity") and where["v1"] == ("w0", "affinity")
    assert where["v2"] == ("w1", "spread")
    assert where["v3"] == ("w1", "affinity")  # w1 now computes the shared part too
    assert "v4" not in where and len(placed) == 2 * SLOTS


def test_with_no_upstream_anywhere_models_then_load_decide() -> None:
    router = Router(["w0", "w1", "w2"])
    router.report("w2", (), ["model.safetensors"])
    (placed,) = router.assign([("p", Needs(frozenset({"x"}), frozenset({"model.safetensors"})))])
    assert (placed.worker, placed.reason) == ("w2", "least busy")
    spread = router.assign([(f"q{i}", Needs(frozenset({f"y{i}"}))) for i in range(2)])
    assert sorted(a.worker for a in spread) == ["w0", "w1"]  # fewest jobs first (w2 has p)


def test_a_job_is_not_sent_back_to_the_worker_it_died_on() -> None:
    router = Router(["w0", "w1"])
    router.report("w0", TXT2IMG, ())
    (placed,) = router.assign([("v", img2img("1"))], exclude={"v": {"w0"}})
    assert placed.worker == "w1"


def test_a_lost_worker_holds_nothing_and_gives_back_its_jobs() -> None:
    router = Router(["w0", "w1"])
    router.report("w0", TXT2IMG, ["model.safetensors"])
    router.assign([("v1", img2img("1")), ("v2", img2img("2"))])
    assert sorted(router.lost("w0")) == ["v1", "v2"]
    state = router.workers["w0"]
    assert not state.held and not state.models and not state.jobs
    state.alive = False
    assert [a.worker for a in router.assign([("v3", img2img("3"))])] == ["w1"]


def test_no_job_is_placed_beyond_the_slots() -> None:
    router = Router(["w0"])
    placed = router.assign([(f"p{i}", other(str(i))) for i in range(5)])
    assert len(placed) == SLOTS


def test_more_workers_than_the_cluster_holds_is_refused() -> None:
    resources = {"GPU": 2.0, "CPU": 2.0}
    check_room(ClusterConfig("local", workers=4, worker_gpus=0.5), resources)
    for config, words in [
        (ClusterConfig("local", workers=3), "needs 3 GPUs; the cluster has 2"),
        (ClusterConfig("local", workers=3, worker_gpus=0), "3 CPU workers need 3 CPUs"),
    ]:
        try:
            check_room(config, resources)
        except ClusterError as exc:
            assert words in str(exc)
        else:
            raise AssertionError(f"{config} was accepted")


def test_the_store_serves_the_dispatcher_and_records_the_worker(tmp_path: Path) -> None:
    db = tmp_path / "q.sqlite3"
    old = sqlite3.connect(db)  # a database from before the cluster: no worker column
    old.executescript(_SCHEMA.replace(",\n    worker TEXT", ""))
    old.close()
    store = Store(db)
    for n in range(3):
        store.add(f"p{n}", {"1": {"class_type": "X", "inputs": {}}}, client_id=None,
                  extra_data={}, outputs=["1"])  # fmt: skip
    assert [j.prompt_id for j in store.queued(2)] == ["p0", "p1"]
    job = store.claim("p1")  # out of order: the router chose it
    assert job is not None and job.attempts == 1 and store.claim("p1") is None
    store.retry("p1")  # its worker died: queued again, the start counted
    assert store.claim("p1").attempts == 2
    store.finish("p1", Outcome(SUCCESS, {}, [], {}, worker="w1"))
    entry = json.loads(store.history_json("p1"))["p1"]
    assert entry["worker"] == "w1"
    assert store.claim_next().prompt_id == "p0"
    store.finish("p0", Outcome(SUCCESS, {}, [], {}))
    assert "worker" not in json.loads(store.history_json("p0"))["p0"]  # one machine: none
    store.close()


def test_one_machine_never_imports_ray_and_has_no_cluster(live: Any) -> None:
    code = ("import sys, server.app, server.cli, nodegraph.cli; "
            "sys.exit('ray' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0
    status, _, raw = http(live.url, "GET", "/cluster")
    assert status == 404 and json.loads(raw)["error"]["type"] == "not_a_cluster"


def test_the_worker_actor_streams_events_previews_and_what_it_holds() -> None:
    """GraphWorker without Ray: its input files arrive, previews travel as JPEG frames, and its
    report names the server's signatures of what its cache holds (not its own keys)."""
    from nodegraph import events
    from server.cluster.actor import Ended, GraphWorker, RemoteJob, WorkerSpec
    from server.messages import PREVIEW_IMAGE

    worker = GraphWorker(WorkerSpec("w9", {}, node_packages=("nodes.utility",
                                                           "tests.server_fixtures"),
                                    default_nodes=False))  # fmt: skip
    try:
        prompt = {"1": {"class_type": "SlowCount",
                        "inputs": {"steps": 3, "delay": 0.0, "preview": "image", "tag": ""}},
                  "2": {"class_type": "ReadInput", "inputs": {"name": "sent.txt"}},
                  **show(["1", 0])}  # fmt: skip
        keys = {"1": "server-key-1", "2": "server-key-2", "9": "server-key-9"}
        job = RemoteJob("p1", prompt, {}, keys,
                        {"sent.txt": b"four"}, previews=True)  # fmt: skip
        stream = list(worker.run(job))
        ended = stream[-1]
        assert isinstance(ended, Ended) and ended.status == "success", ended
        items = [event for batch in stream[:-1] for event, _files in batch]
        frames = [e.preview for e in items if isinstance(e, events.Progress)]
        assert len(frames) == 3 and all(
            f[:4] == PREVIEW_IMAGE.to_bytes(4, "big") and f[8:10] == b"\xff\xd8" for f in frames)
        shown = [e.ui for e in items if isinstance(e, events.NodeFinished) and e.ui]
        assert {"text": ["4"]} in shown, shown  # ReadInput read the file sent along
        assert set(ended.report.held) == set(keys.values())
        assert ended.report.jobs_done == 1 and not ended.report.busy
    finally:
        worker.close()
