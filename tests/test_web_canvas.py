"""The web canvas in a real browser (Debian's chromium via Playwright) against the real server.

Marked slow: they start the server, run diffusion workflows and drive a browser. Screenshots go
to test-artifacts/web/.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.web_fixtures import ARTIFACTS, Page, Server, get_json, web_browser, web_page, web_server  # noqa: F401

pytestmark = pytest.mark.slow

RUN_TIMEOUT_MS = 240_000


# ----------------------------------------------------------------------------------- helpers


def workflow(p: Page) -> dict[str, Any]:
    return p.page.evaluate("window.nodegraph.getWorkflow()")


def ids_of(wf: dict[str, Any], cls: str) -> list[str]:
    return [i for i, n in wf.items() if n["class_type"] == cls]


def node(p: Page, node_id: str) -> Any:
    return p.page.locator(f'[data-testid=node][data-id="{node_id}"]')


def handle(p: Page, node_id: str, handle_id: str) -> Any:
    return p.page.locator(
        f'.react-flow__handle[data-nodeid="{node_id}"][data-handleid="{handle_id}"]'
    )


def drag(p: Page, src: Any, dst: Any) -> None:
    a, b = src.bounding_box(), dst.bounding_box()
    p.page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    p.page.mouse.down()
    p.page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2, steps=12)
    p.page.mouse.up()


def wait_until(p: Page, fn: str, arg: Any = None, timeout_ms: int = 30_000) -> Any:
    """Poll a page function until it returns something truthy (the server's CSP forbids the
    string evaluation that Playwright's wait_for_function needs)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = p.page.evaluate(fn, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {fn}")
        time.sleep(0.1)


def finished_runs(p: Page) -> int:
    return int(p.page.get_attribute("[data-testid=app]", "data-finished-runs") or 0)


def queue_and_wait(p: Page, click: bool = True) -> None:
    before = finished_runs(p)
    if click:
        p.page.click("[data-testid=queue-button]")
    queue_and_wait_from(p, before)


def wait_for_thumbnail(p: Page, node_id: str) -> None:
    """Until the node shows its input picture (a LoadImage's upload), fully loaded."""
    wait_until(
        p,
        """(id) => {
            const i = document.querySelector(
                `[data-testid=node][data-id="${id}"] img[data-testid=input-image]`);
            return i && i.complete && i.naturalWidth > 0;
        }""",
        node_id,
    )


def images_loaded(p: Page, node_id: str) -> int:
    """How many finished images the node shows, fully loaded."""
    sel = f'[data-testid=node][data-id="{node_id}"] img[data-testid=node-image]'
    p.page.wait_for_selector(sel)
    return p.page.evaluate(
        """async (sel) => {
            const imgs = [...document.querySelectorAll(sel)];
            await Promise.all(imgs.map((i) => i.decode().catch(() => null)));
            return imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
        }""",
        sel,
    )


def pick_model(p: Page, server: Server) -> None:
    """Choose a model the server has when the default names one it lacks (the tiny test model)."""
    info = server.object_info()
    for cls in ("CheckpointLoader", "CheckpointLoaderSimple"):
        entry = info.get(cls)
        if not entry:
            continue
        name, spec = next(iter(entry["input"]["required"].items()))
        choices = spec[0]
        for nid in ids_of(workflow(p), cls):
            value = workflow(p)[nid]["inputs"].get(name)
            if choices and value not in choices:
                node(p, nid).locator(f"[data-testid=input-{name}]").select_option(choices[0])


def open_palette_at(p: Page, x: float, y: float) -> None:
    p.page.mouse.dblclick(x, y)
    p.page.wait_for_selector("[data-testid=palette]")


def add_from_palette(p: Page, x: float, y: float, query: str, cls: str) -> str:
    before = set(workflow(p))
    open_palette_at(p, x, y)
    p.page.fill("[data-testid=palette-search]", query)
    first = p.page.locator("[data-testid=palette-item]").first
    assert first.get_attribute("data-class") == cls
    p.page.keyboard.press("Enter")
    p.page.wait_for_selector("[data-testid=palette]", state="detached")
    (new,) = set(workflow(p)) - before
    assert workflow(p)[new]["class_type"] == cls
    return new


def picture(path: Path, hue: float = 0.0) -> Path:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64] / 64
    img = np.stack([0.2 + 0.6 * x, 0.3 * y + hue * 0.5, 0.9 - 0.5 * x], -1)
    img[(x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.08] = (0.9, 0.8, 0.1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------- tests


def test_default_graph_runs_then_strength_rerun_uses_cache(page: Page, server: Server) -> None:
    p = page
    wf = workflow(p)
    assert len(wf) == p.page.locator("[data-testid=node]").count() >= 8
    saves = ids_of(wf, "SaveImage")
    assert len(saves) == 2, wf
    wait_until(p, "() => document.querySelectorAll('.react-flow__edge').length > 8")
    assert p.page.locator(".react-flow__minimap").is_visible()
    p.shot("default")

    pick_model(p, server)
    # Watch the live state while it runs: a highlighted node, a progress bar, preview frames.
    p.page.evaluate(
        """() => {
            const seen = (window.__seen = { executing: 0, progress: 0, preview: 0, queued: 0 });
            new MutationObserver(() => {
                const q = parseInt(document.querySelector('[data-testid=queue-count]').innerText);
                seen.queued = Math.max(seen.queued, q || 0);
                if (document.querySelector('[data-status=executing]')) seen.executing++;
                if (document.querySelector('[data-testid=progress]')) seen.progress++;
                if (document.querySelector('[data-testid=preview-image]')) seen.preview++;
            }).observe(document.body, { subtree: true, childList: true, attributes: true });
        }"""
    )
    queue_and_wait(p)
    seen = p.page.evaluate("() => window.__seen")
    print("live state seen while running:", seen)
    assert seen["executing"] and seen["queued"] >= 1, seen
    for nid in ids_of(workflow(p), "Denoise"):
        done, total = node(p, nid).get_attribute("data-progress").split("/")
        assert done == total and int(total) > 0
    for sid in saves:
        assert images_loaded(p, sid) >= 1
    p.shot("run1")

    # The img2img branch: the AddNoise that starts from a partly noised input.
    adds = ids_of(workflow(p), "AddNoise")
    img2img = min(adds, key=lambda i: workflow(p)[i]["inputs"]["strength"])
    txt2img = [a for a in adds if a != img2img]
    slider = node(p, img2img).locator("[data-testid=slider-strength]")
    box = slider.bounding_box()
    before = workflow(p)[img2img]["inputs"]["strength"]
    runs = finished_runs(p)
    # Releasing the slider queues the graph again.
    p.page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    queue_and_wait_from(p, runs)
    after = workflow(p)[img2img]["inputs"]["strength"]
    assert after != before
    for nid in [*ids_of(workflow(p), "CheckpointLoader"), *txt2img]:
        assert node(p, nid).get_attribute("data-status") == "cached", nid
    assert p.page.locator("[data-testid=badge-cached]").count() >= 3
    for sid in saves:
        assert images_loaded(p, sid) >= 1
    p.shot("run2-cached")

    # Dropping the saved PNG restores the workflow it embeds, layout included.
    ran = workflow(p)
    src = node(p, saves[-1]).locator("img[data-testid=node-image]").first.get_attribute("src")
    p.page.click("[data-testid=clear-button]")
    assert not workflow(p)
    drop_file(p, src, "img2img.png", "image/png")
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(ran))
    restored = workflow(p)
    assert restored[img2img]["inputs"]["strength"] == after
    assert {i: n["_meta"]["pos"] for i, n in restored.items()} == {
        i: n["_meta"]["pos"] for i, n in ran.items()
    }
    p.shot("png-dropped")


def drop_file(p: Page, url: str, name: str, mime: str) -> None:
    """Drop the file at `url` onto the canvas, as a file dragged from the desktop."""
    dt = p.page.evaluate_handle(
        """async ([url, name, mime]) => {
            const blob = await (await fetch(url)).blob();
            const dt = new DataTransfer();
            dt.items.add(new File([blob], name, { type: mime }));
            return dt;
        }""",
        [url, name, mime],
    )
    p.page.dispatch_event("main.canvas", "drop", {"dataTransfer": dt})


def queue_and_wait_from(p: Page, runs: int) -> None:
    state = wait_until(
        p,
        """(n) => {
            if (Number(document.querySelector('[data-testid=app]').dataset.finishedRuns) > n)
                return 'done';
            const b = document.querySelector('[data-testid=banner][data-kind=error]');
            return b ? 'error: ' + b.innerText : null;
        }""",
        runs,
        RUN_TIMEOUT_MS,
    )
    assert state == "done", state


def drop_bytes(p: Page, data: bytes, name: str, mime: str, target: str = "main.canvas") -> None:
    """Drop a file with these bytes on `target`, as a file dragged from the desktop."""
    dt = p.page.evaluate_handle(
        """([b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: mime }));
            return dt;
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )
    p.page.dispatch_event(target, "drop", {"dataTransfer": dt})


def test_a_comfyui_workflow_dropped_as_json_runs_with_ksampler_progress(
    page: Page, server: Server
) -> None:
    p = page
    path = Path(__file__).resolve().parent.parent / "workflows" / "comfy_txt2img_img2img.json"
    wf = json.loads(path.read_text())
    drop_bytes(p, path.read_bytes(), path.name, "application/json")
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(wf))
    loaded = workflow(p)
    for nid, n in wf.items():
        assert loaded[nid]["class_type"] == n["class_type"]
        assert loaded[nid]["inputs"] == n["inputs"]
    p.page.wait_for_timeout(300)
    pick_model(p, server)
    queue_and_wait(p)
    for nid in ids_of(loaded, "KSampler"):  # the last progress report stays on the node
        done, total = node(p, nid).get_attribute("data-progress").split("/")
        assert done == total and int(total) > 0
    for sid in ids_of(loaded, "SaveImage"):
        assert images_loaded(p, sid) >= 1
    p.shot("comfy-run")


def test_mismatched_connection_is_refused_and_a_link_replaces_the_old(page: Page) -> None:
    p = page
    wf = workflow(p)
    loader = ids_of(wf, "CheckpointLoader")[0]
    denoise = ids_of(wf, "Denoise")[0]
    edges = p.page.locator(".react-flow__edge").count()
    # VAE onto a CONDITIONING input: refused.
    drag(p, handle(p, loader, "out:2"), handle(p, denoise, "in:positive"))
    assert p.page.locator(".react-flow__edge").count() == edges
    assert workflow(p)[denoise]["inputs"]["positive"] == wf[denoise]["inputs"]["positive"]
    p.page.wait_for_selector("[data-testid=banner][data-kind=error]")
    assert "CONDITIONING" in p.page.inner_text("[data-testid=banner]")
    p.shot("refused")
    # The positive prompt's CONDITIONING onto the negative input replaces the old link.
    positive_src = wf[denoise]["inputs"]["positive"][0]
    drag(p, handle(p, positive_src, "out:0"), handle(p, denoise, "in:negative"))
    assert workflow(p)[denoise]["inputs"]["negative"] == [positive_src, 0]
    assert p.page.locator(".react-flow__edge").count() == edges
    p.page.click("[data-testid=undo]")
    assert workflow(p)[denoise]["inputs"]["negative"] == wf[denoise]["inputs"]["negative"]


def test_a_link_is_picked_up_by_its_input_end(page: Page) -> None:
    p = page
    wf = workflow(p)
    denoise = ids_of(wf, "Denoise")[0]
    positive = wf[denoise]["inputs"]["positive"]
    edges = p.page.locator(".react-flow__edge").count()
    # Pressed on the linked positive input and dropped on the negative one: the link moves,
    # still from its output, and replaces the negative's own.
    drag(p, handle(p, denoise, "in:positive"), handle(p, denoise, "in:negative"))
    moved = workflow(p)[denoise]["inputs"]
    assert moved["negative"] == positive
    assert "positive" not in moved
    assert p.page.locator(".react-flow__edge").count() == edges - 1
    p.page.click("[data-testid=undo]")
    assert workflow(p)[denoise]["inputs"]["positive"] == positive
    assert workflow(p)[denoise]["inputs"]["negative"] == wf[denoise]["inputs"]["negative"]
    # Dropped on empty canvas: the link is removed (and the palette offers a node to take it).
    a = handle(p, denoise, "in:positive").bounding_box()
    p.page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    p.page.mouse.down()
    p.page.mouse.move(640, 700, steps=12)
    p.page.mouse.up()
    assert "positive" not in workflow(p)[denoise]["inputs"]
    assert p.page.locator(".react-flow__edge").count() == edges - 1
    p.page.keyboard.press("Escape")
    p.page.wait_for_selector("[data-testid=palette]", state="detached")
    p.shot("picked-up")


def test_invalid_graph_shows_its_error_on_the_node_and_input(page: Page) -> None:
    p = page
    p.allow_console("400")
    add = ids_of(workflow(p), "AddNoise")[0]
    node(p, add).locator("[data-testid=input-steps]").fill("0")
    p.page.click("[data-testid=queue-button]")
    err = node(p, add).locator('[data-testid=input-error][data-input="steps"]')
    err.wait_for()
    assert "steps" in p.page.inner_text("[data-testid=banner]")
    assert "has-error" in (node(p, add).get_attribute("class") or "")
    p.shot("invalid")
    # Fixing the value clears the mark on that input.
    node(p, add).locator("[data-testid=input-steps]").fill("4")
    assert err.count() == 0


def test_a_failing_node_shows_the_exception_on_the_node(page: Page, tmp_path: Path) -> None:
    p = page
    wf = {
        "one": {"class_type": "PrimitiveInt", "inputs": {"value": 1}},
        "div": {"class_type": "IntMath", "inputs": {"a": ["one", 0], "b": 0, "op": "div"}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["div", 0]}},
    }
    path = tmp_path / "div-by-zero.json"
    path.write_text(json.dumps(wf))
    p.page.set_input_files("[data-testid=file-input]", str(path))
    wait_until(p, "() => document.querySelectorAll('[data-testid=node]').length === 3")
    runs = finished_runs(p)
    p.page.click("[data-testid=queue-button]")
    err = node(p, "div").locator("[data-testid=node-error]")
    err.wait_for()
    assert "zero" in err.inner_text()
    assert node(p, "div").get_attribute("data-status") == "error"
    assert "div" in p.page.inner_text("[data-testid=banner]")
    wait_until(
        p,
        "(n) => Number(document.querySelector('[data-testid=app]').dataset.finishedRuns) > n",
        runs,
    )
    p.shot("runtime-error")


def test_stop_interrupts_a_running_prompt(page: Page, server: Server) -> None:
    p = page
    pick_model(p, server)
    noise = ids_of(workflow(p), "AddNoise")[0]
    node(p, noise).locator("[data-testid=input-steps]").fill("1000")
    node(p, noise).locator("[data-testid=input-seed]").fill("12345")
    runs = finished_runs(p)
    p.page.click("[data-testid=queue-button]")
    p.page.wait_for_selector("[data-class=Denoise][data-status=executing]", timeout=60_000)
    p.page.click("[data-testid=interrupt-button]")
    wait_until(
        p,
        "(n) => Number(document.querySelector('[data-testid=app]').dataset.finishedRuns) > n",
        runs,
        60_000,
    )
    assert "Interrupted" in p.page.inner_text("[data-testid=banner]")
    assert p.page.locator("[data-status=executing]").count() == 0
    assert p.page.is_disabled("[data-testid=interrupt-button]")


def test_save_reload_and_load_keep_values_and_layout(page: Page, tmp_path: Path) -> None:
    p = page
    enc = ids_of(workflow(p), "TextEncode") or ids_of(workflow(p), "CLIPTextEncode")
    box = node(p, enc[0]).locator("[data-testid=input-text]")
    box.fill("a yellow square, saved")
    # Move a node so that the layout differs from the default one.
    head = node(p, enc[0]).locator(".gnode-head")
    hb = head.bounding_box()
    p.page.mouse.move(hb["x"] + 20, hb["y"] + 8)
    p.page.mouse.down()
    p.page.mouse.move(hb["x"] + 80, hb["y"] + 60, steps=6)
    p.page.mouse.up()
    saved_wf = workflow(p)
    with p.page.expect_download() as dl:
        p.page.click("[data-testid=save-button]")
    path = tmp_path / "saved.json"
    dl.value.save_as(path)
    saved = json.loads(path.read_text())
    assert saved[enc[0]]["inputs"]["text"] == "a yellow square, saved"
    assert saved[enc[0]]["_meta"]["pos"] == saved_wf[enc[0]]["_meta"]["pos"]
    assert all(isinstance(n["_meta"]["pos"], list) for n in saved.values())

    p.page.click("[data-testid=default-button]")
    assert workflow(p)[enc[0]]["inputs"]["text"] != "a yellow square, saved"
    p.page.reload()
    p.page.wait_for_selector("[data-testid=node]")
    p.page.set_input_files("[data-testid=file-input]", str(path))
    wait_until(
        p,
        "() => Object.values(window.nodegraph.getWorkflow()).some("
        "n => n.inputs.text === 'a yellow square, saved')",
    )
    assert workflow(p) == saved
    p.shot("loaded")


def test_build_a_small_graph_by_ui_with_an_upload_and_run_it(page: Page, tmp_path: Path) -> None:
    p = page
    p.page.click("[data-testid=clear-button]")
    assert p.page.locator("[data-testid=node]").count() == 0
    load = add_from_palette(p, 330, 300, "load image", "LoadImage")
    preview = add_from_palette(p, 760, 320, "previewim", "PreviewImage")
    drag(p, handle(p, load, "out:0"), handle(p, preview, "in:images"))
    assert workflow(p)[preview]["inputs"]["images"] == [load, 0]
    node(p, load).locator("[data-testid=upload-input]").set_input_files(
        str(picture(tmp_path / "upload.png"))
    )
    wait_for_thumbnail(p, load)
    assert workflow(p)[load]["inputs"]["image"].startswith("upload")
    queue_and_wait(p)
    assert images_loaded(p, preview) == 1
    p.shot("built")

    # Rename a node: double-click its title.
    node(p, preview).locator(".gnode-title").dblclick()
    p.page.fill("[data-testid=rename]", "My preview")
    p.page.keyboard.press("Enter")
    assert workflow(p)[preview]["_meta"]["title"] == "My preview"
    # A picture dropped on LoadImage is uploaded into it.
    first = workflow(p)[load]["inputs"]["image"]
    other = picture(tmp_path / "dropped.png", hue=0.6)
    dt = p.page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
            return dt;
        }""",
        base64.b64encode(other.read_bytes()).decode(),
    )
    node(p, load).locator(".gnode-head").dispatch_event("drop", {"dataTransfer": dt})
    wait_until(
        p,
        "([id, first]) => window.nodegraph.getWorkflow()[id].inputs.image !== first",
        [load, first],
    )
    assert workflow(p)[load]["inputs"]["image"].startswith("dropped")


def test_editing_palette_undo_copy_paste_duplicate_delete(page: Page) -> None:
    p = page
    n0 = len(workflow(p))
    new = add_from_palette(p, 640, 700, "intmath", "IntMath")
    assert len(workflow(p)) == n0 + 1
    # A seed: "randomize" changes it now; the mode decides what happens after a queue.
    noise = ids_of(workflow(p), "AddNoise")[0]
    seed = workflow(p)[noise]["inputs"]["seed"]
    node(p, noise).locator("[data-testid=randomize-seed]").click()
    assert workflow(p)[noise]["inputs"]["seed"] != seed
    node(p, noise).locator("[data-testid=control-seed]").select_option("increment")
    assert workflow(p)[noise]["_meta"]["control"]["seed"] == "increment"
    node(p, new).locator("[data-testid=input-a]").fill("5")
    assert workflow(p)[new]["inputs"]["a"] == 5
    node(p, new).locator(".gnode-head").click()
    p.page.keyboard.press("Control+c")
    p.page.keyboard.press("Control+v")
    assert len(workflow(p)) == n0 + 2
    p.page.keyboard.press("Control+d")
    assert len(workflow(p)) == n0 + 3
    assert [n["inputs"]["a"] for n in workflow(p).values() if n["class_type"] == "IntMath"] == [
        5
    ] * 3
    p.page.keyboard.press("Delete")
    assert len(workflow(p)) == n0 + 2
    p.page.keyboard.press("Control+z")
    assert len(workflow(p)) == n0 + 3
    p.page.keyboard.press("Control+Shift+z")
    assert len(workflow(p)) == n0 + 2
    for _ in range(7):
        p.page.keyboard.press("Control+z")
    assert len(workflow(p)) == n0
    # A link dropped on empty canvas offers the nodes that take its type, and connects the pick.
    decode = ids_of(workflow(p), "VAEDecode")[0]
    src = handle(p, decode, "out:0").bounding_box()
    p.page.mouse.move(src["x"] + src["width"] / 2, src["y"] + src["height"] / 2)
    p.page.mouse.down()
    p.page.mouse.move(640, 160, steps=10)
    p.page.mouse.up()
    p.page.wait_for_selector("[data-testid=palette]")
    offered = p.page.locator("[data-testid=palette-item]").evaluate_all(
        "(items) => items.map((i) => i.dataset.class)"
    )
    assert "PreviewImage" in offered and "SaveImage" in offered and "TextEncode" not in offered
    before = set(workflow(p))
    p.page.fill("[data-testid=palette-search]", "preview")
    p.page.keyboard.press("Enter")
    (added,) = set(workflow(p)) - before
    assert workflow(p)[added]["inputs"]["images"] == [decode, 0]
    p.page.keyboard.press("Control+z")
    assert added not in workflow(p)

    # Multi-select two linked nodes (Ctrl+click), duplicate them: the link between them follows.
    wf = workflow(p)
    noise = next(i for i in ids_of(wf, "AddNoise") if wf[i]["inputs"]["strength"] >= 1)
    denoise = next(i for i in ids_of(wf, "Denoise") if wf[i]["inputs"]["noisy"][0] == noise)
    p.page.click("[data-testid=fit-view]")
    p.page.wait_for_timeout(300)
    node(p, noise).locator(".gnode-head").click()
    node(p, denoise).locator(".gnode-head").click(modifiers=["Control"])
    assert p.page.locator(".react-flow__node.selected").count() == 2
    p.page.keyboard.press("Control+d")
    after = workflow(p)
    (new_noise,) = set(ids_of(after, "AddNoise")) - set(ids_of(wf, "AddNoise"))
    (new_denoise,) = set(ids_of(after, "Denoise")) - set(ids_of(wf, "Denoise"))
    assert after[new_denoise]["inputs"]["noisy"] == [new_noise, 0]
    assert "positive" not in after[new_denoise]["inputs"]  # only links inside the selection
    p.shot("edited")


FRAME_MONITOR = """() => {
    const m = { deltas: [], last: performance.now(), on: true };
    const tick = (t) => {
        m.deltas.push(t - m.last); m.last = t; if (m.on) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    window.__frames = m;
}"""
FRAME_STATS = """() => {
    const m = window.__frames; m.on = false;
    const d = m.deltas.slice(1).sort((a, b) => a - b);
    const q = (f) => d[Math.min(d.length - 1, Math.floor(f * d.length))];
    return { frames: d.length, mean_ms: d.reduce((a, b) => a + b, 0) / d.length,
             p50_ms: q(0.5), p95_ms: q(0.95), max_ms: d[d.length - 1] };
}"""


def _main_thread(cdp: Any) -> dict[str, float]:
    m = {x["name"]: x["value"] for x in cdp.send("Performance.getMetrics")["metrics"]}
    return {"task": m["TaskDuration"], "script": m["ScriptDuration"]}


def measure(p: Page, action: Any, events: int) -> dict[str, float]:
    """Frame times while `action` runs, and the page's main-thread time (all work, and script
    alone) per input event: the second is what the canvas costs, whatever else the machine does."""
    cdp = p.page.context.new_cdp_session(p.page)
    cdp.send("Performance.enable")
    p.page.evaluate(FRAME_MONITOR)
    before = _main_thread(cdp)
    t0 = time.perf_counter()
    action()
    p.page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(null)))")
    stats = p.page.evaluate(FRAME_STATS)
    stats["wall_s"] = time.perf_counter() - t0
    after = _main_thread(cdp)
    stats["main_thread_ms_per_event"] = (after["task"] - before["task"]) * 1000 / events
    stats["script_ms_per_event"] = (after["script"] - before["script"]) * 1000 / events
    cdp.detach()
    return {k: round(v, 2) for k, v in stats.items()}


def test_two_hundred_nodes_stay_responsive(page: Page, tmp_path: Path) -> None:
    p = page
    wf: dict[str, Any] = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 1}}}
    for i in range(2, 200):
        inputs = {"a": [str(i - 1), 0], "b": 1, "op": "add"}
        wf[str(i)] = {"class_type": "IntMath", "inputs": inputs}
    wf["200"] = {"class_type": "ShowValue", "inputs": {"value": ["199", 0]}}
    for i, n in wf.items():
        k = int(i) - 1
        n["_meta"] = {"pos": [(k % 20) * 320, (k // 20) * 260]}
    path = tmp_path / "two-hundred.json"
    path.write_text(json.dumps(wf))
    t0 = time.perf_counter()
    p.page.set_input_files("[data-testid=file-input]", str(path))
    wait_until(p, "() => document.querySelectorAll('[data-testid=node]').length === 200")
    load_s = time.perf_counter() - t0
    p.page.wait_for_timeout(300)
    p.shot("200-fit")

    def pan() -> None:
        p.page.mouse.move(600, 700)
        p.page.mouse.down()
        p.page.mouse.move(300, 400, steps=40)
        p.page.mouse.up()

    def zoom() -> None:
        p.page.mouse.move(640, 400)
        for _ in range(10):
            p.page.mouse.wheel(0, -120)
            p.page.wait_for_timeout(16)

    def visible_head() -> Any:
        vid = p.page.evaluate(
            """() => {
                const c = document.querySelector('main.canvas').getBoundingClientRect();
                for (const n of document.querySelectorAll('[data-testid=node]')) {
                    const r = n.querySelector('.gnode-head').getBoundingClientRect();
                    if (r.left > c.left + 20 && r.right < c.right - 300 && r.top > c.top + 20
                        && r.bottom < c.bottom - 250) return n.dataset.id;
                }
                return null;
            }"""
        )
        assert vid, "no node in view"
        return node(p, vid).locator(".gnode-head")

    def drag_node() -> None:
        b = visible_head().bounding_box()
        p.page.mouse.move(b["x"] + 10, b["y"] + b["height"] / 2)
        p.page.mouse.down()
        p.page.mouse.move(b["x"] + 210, b["y"] + 150, steps=40)
        p.page.mouse.up()

    def drag_all() -> None:
        p.page.keyboard.press("Control+a")
        drag_node()

    results = {"load_200_nodes_s": round(load_s, 2), "pan": measure(p, pan, 40)}
    results["zoom_in"] = measure(p, zoom, 10)
    p.page.click("[data-testid=fit-view]")
    p.page.wait_for_timeout(400)
    before = workflow(p)

    def moved() -> int:
        return sum(n["_meta"]["pos"] != before[i]["_meta"]["pos"] for i, n in workflow(p).items())

    results["drag_node"] = measure(p, drag_node, 40)
    assert moved() == 1
    results["drag_200_selected"] = measure(p, drag_all, 40)
    assert moved() == 200
    t0 = time.perf_counter()
    p.page.keyboard.press("Control+z")
    p.page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(null)))")
    results["undo_s"] = round(time.perf_counter() - t0, 3)
    assert len(workflow(p)) == 200
    p.page.keyboard.press("Escape")
    # Zoomed far out, widgets are drawn as text; zoom in on the first node to edit it.
    field = node(p, "1").locator("[data-testid=input-value]")
    assert field.count() == 0
    b = node(p, "1").bounding_box()
    p.page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    for _ in range(40):
        if field.count():
            break
        p.page.mouse.wheel(0, -200)
        p.page.wait_for_timeout(50)
    t0 = time.perf_counter()
    field.fill("7")
    p.page.wait_for_timeout(0)
    results["edit_value_s"] = round(time.perf_counter() - t0, 3)
    assert workflow(p)["1"]["inputs"]["value"] == 7
    p.shot("200-zoomed")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "perf.json").write_text(json.dumps(results, indent=2))
    print("200-node canvas:", json.dumps(results))
    # Times are measured and written to perf.json, not asserted (timed tests are flaky on
    # loaded machines); the canvas must keep rendering frames under each interaction.
    for k in ("pan", "zoom_in", "drag_node", "drag_200_selected"):
        assert results[k]["frames"] > 5, results
    # It still runs: 200 nodes queued and executed.
    t0 = time.perf_counter()
    queue_and_wait(p)
    results["run_200_nodes_s"] = round(time.perf_counter() - t0, 2)
    assert node(p, "200").locator("[data-testid=node-text]").inner_text() == str(7 + 198)
    (ARTIFACTS / "perf.json").write_text(json.dumps(results, indent=2))
    print("200-node run:", results["run_200_nodes_s"], "s")


def save_ui(p: Page, path: Path) -> dict[str, Any]:
    """Click "Save UI" and read the canvas file it downloads (kept at `path`)."""
    with p.page.expect_download() as dl:
        p.page.click("[data-testid=save-ui-button]")
    dl.value.save_as(path)
    return json.loads(path.read_text())


def prompt_of(workflow_: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """What an API workflow runs: each node's class and inputs (not its `_meta`)."""
    return {k: (n["class_type"], n["inputs"]) for k, n in workflow_.items()}


def test_a_comfyui_canvas_file_and_png_open_run_and_save_back(
    page: Page, server: Server, tmp_path: Path
) -> None:
    """A ComfyUI canvas (UI-format) file opens with its nodes where the canvas had them, runs,
    and "Save UI" writes a canvas file that converts back to the same API workflow; a PNG
    carrying such a canvas opens the same way."""
    from PIL import Image, PngImagePlugin

    from nodegraph.registry import default_registry
    from nodegraph.ui_format import ui_to_api

    p = page
    path = Path(__file__).resolve().parent.parent / "workflows" / "comfy" / "txt2img.json"
    canvas = json.loads(path.read_text())
    sampler = next(n for n in canvas["nodes"] if n["type"] == "KSampler")
    sampler["color"], sampler["bgcolor"] = "#223", "#335"  # colours, as ComfyUI's menu sets
    expected, _ = ui_to_api(canvas, default_registry())
    drop_bytes(p, json.dumps(canvas).encode(), path.name, "application/json")
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(expected))
    loaded = workflow(p)
    for ui_node in canvas["nodes"]:
        nid = str(ui_node["id"])
        if nid in expected:
            assert loaded[nid]["class_type"] == expected[nid]["class_type"]
            assert loaded[nid]["_meta"]["pos"] == [round(v) for v in ui_node["pos"][:2]]
    (group,) = canvas["groups"]  # the file's group and coloured node show, and are saved
    box = p.page.locator("[data-testid=canvas-group]")
    assert box.count() == 1 and box.inner_text() == group["title"]
    coloured = [sampler]
    for ui_node in coloured:
        assert node(p, str(ui_node["id"])).get_attribute("data-color") == ui_node["color"]
    pick_model(p, server)
    queue_and_wait(p)
    for sid in ids_of(loaded, "SaveImage"):
        assert images_loaded(p, sid) >= 1
    p.shot("comfy-canvas-file")
    saved_canvas = save_ui(p, tmp_path / "saved.ui.json")
    back, warnings = ui_to_api(saved_canvas, default_registry())
    assert warnings == [] and prompt_of(back) == prompt_of(workflow(p))
    assert [(g["title"], g["bounding"], g["color"]) for g in saved_canvas["groups"]] == [
        (group["title"], group["bounding"], group["color"])]  # fmt: skip
    saved_nodes = {n["id"]: n for n in saved_canvas["nodes"]}
    for ui_node in coloured:
        kept = saved_nodes[ui_node["id"]]
        assert (kept["color"], kept["bgcolor"]) == (ui_node["color"], ui_node["bgcolor"])

    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", path.read_text())
    picture = tmp_path / "comfyui.png"
    Image.new("RGB", (8, 8)).save(picture, pnginfo=info)
    p.page.click("[data-testid=clear-button]")
    drop_bytes(p, picture.read_bytes(), picture.name, "image/png")
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(expected))
    assert {k: v["class_type"] for k, v in workflow(p).items()} == {
        k: v["class_type"] for k, v in expected.items()
    }


def reroute_canvas() -> dict[str, Any]:
    """A ComfyUI canvas with Reroute nodes: tests/data/ui/reroute_chain.json (a PrimitiveInt
    through Reroutes 4 then 5, and 5 fanning out to both inputs of an IntMath), plus Reroute 7
    on the IntMath -> ShowValue link."""
    path = Path(__file__).resolve().parent / "data" / "ui" / "reroute_chain.json"
    canvas = json.loads(path.read_text())
    show = next(n for n in canvas["nodes"] if n["id"] == 6)
    show["pos"], show["inputs"][0]["link"] = [1060, 120], 6
    canvas["nodes"].append(
        {"id": 7, "type": "Reroute", "pos": [900, 300], "size": [75, 26], "flags": {},
         "order": 5, "mode": 0, "inputs": [{"name": "", "type": "*", "link": 5}],
         "outputs": [{"name": "", "type": "INT", "links": [6], "slot_index": 0}],
         "properties": {"showOutputText": False, "horizontal": False}}
    )  # fmt: skip
    canvas["links"][4] = [5, 2, 0, 7, 0, "INT"]
    canvas["links"].append([6, 7, 0, 6, 0, "INT"])
    canvas["last_node_id"], canvas["last_link_id"] = 7, 6
    return canvas


def canvas_links(canvas: dict[str, Any]) -> set[tuple[int, int, int, int]]:
    """A canvas file's links as (origin, slot, target, slot), checked against its nodes' slots."""
    nodes = {n["id"]: n for n in canvas["nodes"]}
    out = set()
    for link_id, origin, o_slot, target, t_slot, _type in canvas["links"]:
        assert link_id in nodes[origin]["outputs"][o_slot]["links"]
        assert nodes[target]["inputs"][t_slot]["link"] == link_id
        out.add((origin, o_slot, target, t_slot))
    return out


def test_a_canvas_files_reroutes_show_move_run_and_save_back(page: Page, tmp_path: Path) -> None:
    """An opened canvas file's Reroute nodes show where the file has them (a chain of two, one
    fanning out to two inputs, one on a later link) as links source -> reroute -> target; one
    can be moved; the queued prompt is the file's (links from the real outputs); "Save UI"
    writes them back as ComfyUI Reroute nodes, which convert to the same prompt again."""
    from nodegraph.registry import default_registry
    from nodegraph.ui_format import ui_to_api

    p = page
    canvas = reroute_canvas()
    expected, _ = ui_to_api(canvas, default_registry())
    drop_bytes(p, json.dumps(canvas).encode(), "reroutes.json", "application/json")
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 3")
    wait_until(p, "() => document.querySelectorAll('.react-flow__edge').length === 6")
    loaded = workflow(p)
    assert prompt_of(loaded) == prompt_of(expected)
    chain = [{"id": "4", "pos": [360, 150]}, {"id": "5", "pos": [480, 150]}]
    assert loaded["2"]["_meta"]["reroutes"] == {"a": chain, "b": chain}
    assert loaded["6"]["_meta"]["reroutes"] == {"value": [{"id": "7", "pos": [900, 300]}]}
    for rid, (x, y) in {"4": (360, 150), "5": (480, 150), "7": (900, 300)}.items():
        wrapper = p.page.locator(f'.react-flow__node[data-id="{rid}"]')
        assert wrapper.evaluate("(e) => e.style.transform") == f"translate({x}px, {y}px)"
    drawn = p.page.evaluate(
        "() => [...document.querySelectorAll('.react-flow__edge')].map((e) => e.dataset.id)"
    )
    assert sorted(drawn) == sorted([
        "1:out:0->4:in:input", "4:out:0->5:in:input", "5:out:0->2:in:a", "5:out:0->2:in:b",
        "2:out:0->7:in:input", "7:out:0->6:in:value",
    ])  # fmt: skip
    p.shot("reroutes-opened")

    # Drag Reroute 5 by its body: both links through it keep it, at its new place.
    box = p.page.locator('[data-testid=reroute][data-id="5"]').bounding_box()
    p.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    p.page.mouse.down()
    p.page.mouse.move(box["x"] + box["width"] / 2 + 30, box["y"] + box["height"] / 2 + 90, steps=8)
    p.page.mouse.up()
    moved = workflow(p)["2"]["_meta"]["reroutes"]
    x5, y5 = moved["a"][1]["pos"]
    assert moved["a"] == moved["b"] and moved["a"][0] == chain[0]
    assert x5 > 480 and y5 > 150 + 50

    with p.page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as req:
        queue_and_wait(p)
    queued = req.value.post_data_json["prompt"]
    assert prompt_of(queued) == prompt_of(expected)
    assert node(p, "6").locator("[data-testid=node-text]").inner_text() == "10"
    p.shot("reroutes-run")

    path = tmp_path / "reroutes.ui.json"
    saved = save_ui(p, path)
    reroutes = {n["id"]: n for n in saved["nodes"] if n["type"] == "Reroute"}
    assert {i: n["pos"] for i, n in reroutes.items()} == {4: [360, 150], 5: [x5, y5], 7: [900, 300]}
    for n in reroutes.values():  # ComfyUI's Reroute node, typed by what flows through it
        assert n["size"] == [75, 26] and n["properties"] == {"showOutputText": False,
                                                              "horizontal": False}  # fmt: skip
        assert [(i["name"], i["type"]) for i in n["inputs"]] == [("", "*")]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == [("", "INT")]
    assert canvas_links(saved) == {(1, 0, 4, 0), (4, 0, 5, 0), (5, 0, 2, 0), (5, 0, 2, 1),
                                   (2, 0, 7, 0), (7, 0, 6, 0)}  # fmt: skip
    assert {t for _, _, _, _, _, t in saved["links"]} == {"INT"}
    assert saved["last_node_id"] == 7 and saved["last_link_id"] == len(saved["links"])
    back, warnings = ui_to_api(saved, default_registry())
    assert warnings == [] and prompt_of(back) == prompt_of(expected)

    # The saved file opens with the same reroutes, and they outlive a reload of the page.
    p.page.click("[data-testid=clear-button]")
    drop_bytes(p, path.read_bytes(), path.name, "application/json")
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 3")
    assert workflow(p)["2"]["_meta"]["reroutes"] == moved
    wait_until(p, "() => (localStorage.getItem('nodegraph.workflow') || '').includes('reroutes')")
    p.page.reload()
    p.page.wait_for_selector("[data-testid=reroute]")
    assert p.page.locator("[data-testid=reroute]").count() == 3
    assert workflow(p)["2"]["_meta"]["reroutes"] == moved
    p.shot("reroutes-saved")


def test_native_reroute_points_show_and_save_back_as_reroute_nodes(
    page: Page, tmp_path: Path
) -> None:
    """A file's native reroute points (0.4's extra.reroutes / linkExtensions; schema 1 the same
    on its links) show as reroute dots on their link and Save UI writes them as Reroute nodes:
    tests/data/ui/groups_and_native_reroutes.json bends its IntMath -> ShowValue link once."""
    from nodegraph.registry import default_registry
    from nodegraph.ui_format import ui_to_api

    p = page
    path = Path(__file__).resolve().parent / "data" / "ui" / "groups_and_native_reroutes.json"
    expected, _ = ui_to_api(json.loads(path.read_text()), default_registry())
    drop_bytes(p, path.read_bytes(), path.name, "application/json")
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 1")
    loaded = workflow(p)
    assert loaded["3"]["_meta"]["reroutes"] == {"value": [{"id": "native-1", "pos": [700, 240]}]}
    wrapper = p.page.locator('.react-flow__node[data-id="native-1"]')
    assert wrapper.evaluate("(e) => e.style.transform") == "translate(700px, 240px)"
    with p.page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as req:
        queue_and_wait(p)
    queued = req.value.post_data_json["prompt"]
    assert prompt_of(queued) == prompt_of(expected)
    p.shot("native-reroutes")
    saved = save_ui(p, tmp_path / "native.ui.json")
    reroutes = {n["id"]: n["pos"] for n in saved["nodes"] if n["type"] == "Reroute"}
    assert reroutes == {4: [700, 240]}
    assert canvas_links(saved) == {(1, 0, 2, 0), (2, 0, 4, 0), (4, 0, 3, 0)}
    back, warnings = ui_to_api(saved, default_registry())
    assert warnings == [] and prompt_of(back) == prompt_of(expected)
    # schema 1: the point is named by the link's parentId
    p.page.click("[data-testid=clear-button]")
    schema1 = path.parent / "subgraph_schema1.json"
    drop_bytes(p, schema1.read_bytes(), schema1.name, "application/json")
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 1")
    wrapper = p.page.locator('.react-flow__node[data-id="native-1"]')
    assert wrapper.evaluate("(e) => e.style.transform") == "translate(740px, 320px)"


def wait_for_pictures(p: Page, node_id: str, testid: str, count: int) -> None:
    """Until the node shows `count` loaded pictures marked `testid` (a sweep's results)."""
    wait_until(
        p,
        """([id, testid, count]) => {
            const imgs = document.querySelectorAll(
                `[data-testid=node][data-id="${id}"] img[data-testid=${testid}]`);
            return imgs.length === count
                && [...imgs].every((i) => i.complete && i.naturalWidth > 0);
        }""",
        [node_id, testid, count],
        RUN_TIMEOUT_MS,
    )


def test_a_strength_sweep_shows_labelled_results_and_reruns_only_the_img2img_cone(
    page: Page, server: Server
) -> None:
    """Sweep on the img2img strength: one request, five prompts, five labelled pictures on the
    output node; after the first, the server's history shows only the img2img cone ran."""
    p = page
    pick_model(p, server)
    wf = workflow(p)
    adds = ids_of(wf, "AddNoise")
    img2img = min(adds, key=lambda i: wf[i]["inputs"]["strength"])
    save = ids_of(wf, "SaveImage")[-1]
    node(p, img2img).locator("[data-testid=sweep-strength]").click()
    node(p, img2img).locator("[data-testid=sweep-values-strength]").fill("0.3, 0.5, 0.7, 0.9, 1.0")
    p.page.click("[data-testid=queue-button]")
    wait_for_pictures(p, save, "strip-image", 5)
    labels = node(p, save).locator("[data-testid=strip-label]").all_inner_texts()
    assert labels == [f"strength {v}" for v in ("0.3", "0.5", "0.7", "0.9", "1")]
    txt2img_save = ids_of(wf, "SaveImage")[0]  # upstream of the sweep: one picture, no strip
    assert node(p, txt2img_save).locator("[data-testid=strip-image]").count() == 0
    p.shot("sweep-strip")
    history = get_json(server.url + "history")
    runs = sorted((h for h in history.values() if "sweep" in h["prompt"][3]),
                  key=lambda h: h["prompt"][3]["sweep"]["index"])[-5:]  # fmt: skip
    assert len({h["prompt"][3]["sweep"]["id"] for h in runs}) == 1
    cone = {img2img} | {i for i, n in wf.items() if n["class_type"] in ("Denoise", "VAEDecode",
                                                                         "SaveImage")}  # fmt: skip
    reran = 0  # a value an earlier test ran (the server's cache is shared) may come whole
    for entry in runs[1:]:
        cached = {n for m in entry["status"]["messages"] if m[0] == "execution_cached"
                  for n in m[1]["nodes"]}  # fmt: skip
        assert set(wf) - cached <= cone, set(wf) - cached
        reran += img2img not in cached
    assert reran >= 3


def test_a_nodes_warning_shows_on_the_node(page: Page, server: Server) -> None:
    p = page
    path = Path(__file__).resolve().parent.parent / "workflows" / "comfy_txt2img.json"
    wf = json.loads(path.read_text())
    wf["6"]["inputs"]["text"] = "a red circle on a blue background, embedding:nowhere"
    wf["3"]["inputs"]["steps"] = 4
    drop_bytes(p, json.dumps(wf).encode(), "warned.json", "application/json")
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(wf))
    pick_model(p, server)
    queue_and_wait(p)
    warning = node(p, "6").locator("[data-testid=node-warning]")
    assert "embedding not found" in warning.inner_text() and "nowhere" in warning.inner_text()
    assert node(p, "7").locator("[data-testid=node-warning]").count() == 0
    p.shot("warning")


def load_image_runs(p: Page, name_start: str) -> None:
    """The canvas's one LoadImage holds an uploaded picture named `name_start...`, shows its
    thumbnail, and runs into a PreviewImage."""
    wait_until(
        p,
        """(start) => Object.values(window.nodegraph.getWorkflow()).some((n) =>
            n.class_type === 'LoadImage' && String(n.inputs.image).startsWith(start))""",
        name_start,
    )
    (load,) = ids_of(workflow(p), "LoadImage")
    wait_for_thumbnail(p, load)
    preview = add_from_palette(p, 760, 320, "previewim", "PreviewImage")
    drag(p, handle(p, load, "out:0"), handle(p, preview, "in:images"))
    queue_and_wait(p)
    assert images_loaded(p, preview) == 1


def test_a_dropped_picture_becomes_a_load_image_that_runs(page: Page, tmp_path: Path) -> None:
    p = page
    p.page.click("[data-testid=clear-button]")
    plain = picture(tmp_path / "dropped_plain.png", hue=0.3)
    drop_bytes(p, plain.read_bytes(), plain.name, "image/png")
    load_image_runs(p, "dropped_plain")
    p.shot("dropped-picture")


def test_the_history_panel_shows_past_results_and_restores_their_graph(
    page: Page, server: Server
) -> None:
    p = page
    pick_model(p, server)
    queue_and_wait(p)
    ran = workflow(p)
    p.page.click("[data-testid=history-button]")
    first = p.page.locator("[data-testid=history-entry]").first
    first.wait_for()
    wait_until(
        p,
        """() => { const i = document.querySelector('[data-testid=history-image]');
                   return i && i.complete && i.naturalWidth > 0; }""",
    )
    p.shot("history")
    p.page.click("[data-testid=clear-button]")
    assert not workflow(p)
    first.locator("[data-testid=history-load]").click()
    wait_until(p, "(n) => Object.keys(window.nodegraph.getWorkflow()).length === n", len(ran))
    restored = workflow(p)
    assert prompt_of(restored) == prompt_of(ran)


def test_the_mask_painter_saves_the_mask_into_the_pictures_alpha(
    page: Page, server: Server, tmp_path: Path
) -> None:
    import io
    import urllib.request

    from PIL import Image

    p = page
    p.page.click("[data-testid=clear-button]")
    load = add_from_palette(p, 330, 300, "load image", "LoadImage")
    node(p, load).locator("[data-testid=upload-input]").set_input_files(
        str(picture(tmp_path / "to_mask.png"))
    )
    wait_until(p, "(id) => !!window.nodegraph.getWorkflow()[id].inputs.image", load)
    node(p, load).locator("[data-testid=edit-mask]").click()
    canvas = p.page.locator("[data-testid=mask-canvas]")
    canvas.wait_for()
    p.page.wait_for_function("() => !document.querySelector('[data-testid=mask-save]').disabled")
    p.page.locator("[data-testid=mask-brush]").fill("96")
    box = canvas.bounding_box()
    p.page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    p.page.mouse.down()
    p.page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    p.page.mouse.up()
    p.shot("mask-painter")
    before = workflow(p)[load]["inputs"]["image"]
    p.page.click("[data-testid=mask-save]")
    changed = "([id, b]) => window.nodegraph.getWorkflow()[id].inputs.image !== b"
    wait_until(p, changed, [load, before])
    name = workflow(p)[load]["inputs"]["image"]
    assert name.startswith("to_mask") and "_mask" in name
    url = server.url + f"view?filename={name}&type=input"
    with urllib.request.urlopen(url) as res:
        masked = Image.open(io.BytesIO(res.read()))
        masked.load()
    assert masked.mode == "RGBA"
    alpha = masked.getchannel("A")
    w, h = masked.size
    assert alpha.getpixel((w // 2, h // 2)) == 0  # painted: transparent, LoadImage's mask 1
    assert alpha.getpixel((2, 2)) == 255  # not painted: opaque
    assert masked.convert("RGB").getpixel((2, 2)) == Image.open(tmp_path / "to_mask.png").convert(
        "RGB"
    ).getpixel((2, 2))


def test_an_img2img_result_compares_with_its_input_on_a_split_slider(
    page: Page, server: Server
) -> None:
    p = page
    pick_model(p, server)
    queue_and_wait(p)
    first, refined = ids_of(workflow(p), "SaveImage")
    node(p, refined).locator("[data-testid=compare-button]").click()
    pair = node(p, refined).locator("[data-testid=before-after]")
    pair.wait_for()
    before = pair.locator("[data-testid=compare-before]").get_attribute("src")
    after = pair.locator("[data-testid=compare-after]").get_attribute("src")
    txt2img = node(p, first).locator("img[data-testid=node-image]").first.get_attribute("src")
    assert before == txt2img and after != before  # the txt2img picture it refined
    assert node(p, first).locator("[data-testid=compare-button]").count() == 0  # no input
    wait_until(
        p,
        """(id) => [...document.querySelectorAll(
            `[data-testid=node][data-id="${id}"] [data-testid=before-after] img`)]
            .every((i) => i.complete && i.naturalWidth > 0)""",
        refined,
    )
    pair.locator("[data-testid=compare-slider]").fill("80")
    style = pair.locator("[data-testid=compare-after]").get_attribute("style")
    assert "inset(0px 0px 0px 80%)" in style or "inset(0 0 0 80%)" in style, style
    p.shot("before-after")


def test_a_two_input_sweep_shows_an_x_y_grid(page: Page, server: Server) -> None:
    """Sweep the img2img strength (across) and its guidance (down): one grid of 2 x 2 pictures
    with the values as headers, on the output node below both."""
    p = page
    pick_model(p, server)
    wf = workflow(p)
    noise = "refine_noise" if "refine_noise" in wf else min(
        ids_of(wf, "AddNoise"), key=lambda i: wf[i]["inputs"]["strength"])  # fmt: skip
    guide = "refine_denoise" if "refine_denoise" in wf else ids_of(wf, "Denoise")[-1]
    save = ids_of(wf, "SaveImage")[-1]
    node(p, noise).locator("[data-testid=sweep-strength]").click()
    node(p, noise).locator("[data-testid=sweep-values-strength]").fill("0.4, 0.8")
    node(p, guide).locator("[data-testid=sweep-cfg]").click()
    node(p, guide).locator("[data-testid=sweep-values-cfg]").fill("3, 7.5")
    p.page.click("[data-testid=queue-button]")
    wait_for_pictures(p, save, "grid-image", 4)
    grid = node(p, save).locator("[data-testid=sweep-grid]")
    assert grid.locator("[data-testid=grid-x]").all_inner_texts() == ["0.4", "0.8"]
    assert grid.locator("[data-testid=grid-y]").all_inner_texts() == ["3", "7.5"]
    corner = grid.locator("[data-testid=grid-corner]").inner_text()
    assert "strength" in corner and "cfg" in corner
    titles = [img.get_attribute("title") for img in grid.locator("img").all()]
    assert titles == ["strength 0.4 · cfg 3", "strength 0.8 · cfg 3", "strength 0.4 · cfg 7.5",
                      "strength 0.8 · cfg 7.5"]  # fmt: skip
    p.shot("sweep-grid")


def test_live_off_keeps_a_released_slider_from_queueing(page: Page, server: Server) -> None:
    p = page
    pick_model(p, server)
    wf = workflow(p)
    img2img = min(ids_of(wf, "AddNoise"), key=lambda i: wf[i]["inputs"]["strength"])
    toggle = p.page.locator("[data-testid=live-toggle]")
    assert toggle.is_checked()  # on by default
    toggle.uncheck()
    slider = node(p, img2img).locator("[data-testid=slider-strength]")
    box = slider.bounding_box()
    history = len(get_json(server.url + "history"))
    p.page.mouse.click(box["x"] + box["width"] * 0.7, box["y"] + box["height"] / 2)
    p.page.wait_for_timeout(1500)
    assert workflow(p)[img2img]["inputs"]["strength"] != wf[img2img]["inputs"]["strength"]
    assert p.page.inner_text("[data-testid=queue-count]").split()[0] == "0"
    assert len(get_json(server.url + "history")) == history  # nothing was queued
    p.page.reload()
    assert not p.page.locator("[data-testid=live-toggle]").is_checked()  # remembered
    p.page.locator("[data-testid=live-toggle]").check()


def test_a_pasted_picture_becomes_a_load_image_that_runs(page: Page, tmp_path: Path) -> None:
    p = page
    p.page.click("[data-testid=clear-button]")
    plain = picture(tmp_path / "clip.png", hue=0.6)
    p.page.evaluate(
        """([b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'image.png', { type: 'image/png' }));
            window.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt }));
        }""",
        [base64.b64encode(plain.read_bytes()).decode()],
    )
    load_image_runs(p, "pasted-")
    p.shot("pasted-picture")


def test_unload_models_keeps_results_and_free_memory_drops_them(page: Page, server: Server) -> None:
    p = page
    pick_model(p, server)
    queue_and_wait(p)
    loaders = ids_of(workflow(p), "CheckpointLoader")
    p.page.click("[data-testid=history-button]")  # the queue panel frees memory, as ComfyUI's
    asks = {"unload-models": {"unload_models": True, "free_memory": False},
            "free-memory": {"unload_models": True, "free_memory": True}}  # fmt: skip
    for button, asked in asks.items():
        with p.page.expect_response(lambda r: r.url.endswith("/free")) as answer:
            p.page.click(f"[data-testid={button}]")
        assert answer.value.status == 200 and answer.value.request.post_data_json == asked
        queue_and_wait(p)  # done by the server before this prompt
        statuses = {node(p, nid).get_attribute("data-status") for nid in loaders}
        # unloading keeps the cached results; freeing memory drops them and the models
        assert statuses == ({"cached"} if button == "unload-models" else {"done"}), button


def test_double_clicking_a_link_adds_a_reroute_that_changes_nothing_queued(
    page: Page, server: Server, tmp_path: Path
) -> None:
    """ComfyUI's "Add Reroute": a reroute dot where the link was double-clicked, the link then
    running through it (typed by it), resolved away in the queued prompt, saved as a Reroute."""
    p = page
    pick_model(p, server)
    before = prompt_of(workflow(p))
    edges = p.page.evaluate(
        "() => [...document.querySelectorAll('.react-flow__edge')].map((e) => e.dataset.id)"
    )
    link = next(e for e in edges if e.endswith(":in:latent") and "->" in e)
    source, target = link.split("->")[0].split(":")[0], link.split("->")[1].split(":")[0]
    middle = p.page.evaluate(
        """(id) => {
            const path = document.querySelector(
                `.react-flow__edge[data-id="${id}"] .react-flow__edge-path`);
            const at = path.getPointAtLength(path.getTotalLength() / 2);
            const m = path.getScreenCTM();
            return { x: m.a * at.x + m.c * at.y + m.e, y: m.b * at.x + m.d * at.y + m.f };
        }""",
        link,
    )
    p.page.mouse.dblclick(middle["x"], middle["y"])
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 1")
    rid = p.page.locator("[data-testid=reroute]").get_attribute("data-id")
    assert p.page.locator("[data-testid=reroute]").get_attribute("data-type") == "LATENT"
    assert p.page.locator("[data-testid=palette]").count() == 0  # not the canvas's double-click
    box = p.page.locator("[data-testid=reroute]").bounding_box()
    assert abs(box["x"] + box["width"] / 2 - middle["x"]) < 8  # where it was double-clicked
    drawn = p.page.evaluate(
        "() => [...document.querySelectorAll('.react-flow__edge')].map((e) => e.dataset.id)"
    )
    assert link not in drawn and f"{source}:out:0->{rid}:in:input" in drawn
    assert any(e.startswith(f"{rid}:out:0->{target}:") for e in drawn)
    after = workflow(p)
    assert prompt_of(after) == before  # the API workflow is the same
    p.shot("reroute-added")
    with p.page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as req:
        queue_and_wait(p)
    assert prompt_of(req.value.post_data_json["prompt"]) == before
    saved = save_ui(p, tmp_path / "with_reroute.json")
    assert [n["type"] for n in saved["nodes"]].count("Reroute") == 1
    p.page.click("[data-testid=undo]")  # undo takes it away again
    wait_until(p, "() => document.querySelectorAll('[data-testid=reroute]').length === 0")
    assert link in p.page.evaluate(
        "() => [...document.querySelectorAll('.react-flow__edge')].map((e) => e.dataset.id)"
    )
