"""ComfyUI's canvas (UI) format: UI -> API by the frontend's rules (one small canvas per rule in
tests/data/ui/, each with the API prompt expected, written by hand), API -> UI -> API for every
workflow in workflows/, PNGs that carry a workflow, and the CLI's convert / validate / run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from nodegraph.cli import main
from nodegraph.registry import default_registry
from nodegraph.ui_format import (
    WorkflowFileError,
    api_to_ui,
    detect_format,
    read_workflow_file,
    ui_to_api,
    widget_slots,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "ui"
CASES = sorted(p.stem for p in DATA.glob("*.json") if not p.name.endswith(".api.json"))
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_every_rule_has_a_case():
    assert set(CASES) == {
        "txt2img_seed_control",  # widgets, seed + control_after_generate, trailing values, a Note
        "img2img_upload",  # LoadImage's upload-button value
        "converted_widget",  # a widget turned into an input, linked; another with an empty slot
        "groups_and_native_reroutes",  # groups and native reroute points: no effect
        "reroute_chain",  # legacy Reroute nodes, chained, one feeding two inputs
        "primitive_two_seeds",  # a PrimitiveNode's value written into two seeds
        "muted",  # mode 2: dropped, and the inputs linked from it
        "bypassed",  # mode 4: consumers take the bypassed node's input of the same type
        "group_node",  # extra.groupNodes, "workflow>NAME", ids "<group id>:<index>"
        "subgraph_schema1",  # schema 1 (links as objects), definitions.subgraphs, "<id>:<inner id>"
        "subgraph_nested",  # a subgraph in a subgraph: "<id>:<id>:<inner id>"; a bypass inside
        "subgraph_promoted_widgets",  # widgets promoted to the instance: its widgets_values
        "titles",  # _meta.title from custom titles, else the display name
        "unknown_classes",  # converted with their links; each class and node named
    }


@pytest.mark.parametrize("name", CASES)
def test_ui_to_api_follows_the_frontends_rules(name, registry):
    ui = load(DATA / f"{name}.json")
    assert detect_format(ui) == "ui"
    api, warnings = ui_to_api(ui, registry)
    assert api == load(DATA / f"{name}.api.json")
    if name == "unknown_classes":
        assert len(warnings) == 2
        assert "'FancyUpscaler' (node 20)" in warnings[0]
        assert "'SeedEverything' (node 21)" in warnings[1]
    else:
        assert warnings == []


def test_schema_1_is_told_from_its_links(registry):
    ui = load(DATA / "subgraph_schema1.json")
    assert ui["version"] == 1 and isinstance(ui["links"][0], dict)
    api, _ = ui_to_api(ui, registry)
    assert api["3"]["inputs"]["positive"] == ["12:1", 0]  # through the subgraph's output slot
    assert api["12:1"]["inputs"]["clip"] == ["4", 1]  # through its input slot


def test_a_bypassed_group_and_a_muted_subgraph(registry):
    group = load(DATA / "group_node.json")
    group["nodes"][2]["mode"] = 4  # bypass the group node: its LATENT input goes straight on
    api, _ = ui_to_api(group, registry)
    assert not any(k.startswith("30:") for k in api)
    assert api["8"]["inputs"]["samples"] == ["5", 0]
    sub = load(DATA / "subgraph_schema1.json")
    sub["nodes"][2]["mode"] = 2  # mute the subgraph: its contents go, and the links from them
    api, _ = ui_to_api(sub, registry)
    assert not any(k.startswith("12:") for k in api)
    assert "positive" not in api["3"]["inputs"] and "negative" not in api["3"]["inputs"]


def with_defaults(api: dict, registry) -> dict:
    """An API workflow as a canvas holds it: every widget input present (its default when the
    file leaves it out), and every node titled (its display name when it has no title)."""
    out = {}
    for key, node in api.items():
        cls = registry.get(node["class_type"])
        inputs = dict(node["inputs"])
        for name, extra in widget_slots(cls.spec):
            if extra is None and name not in inputs:
                inputs[name] = cls.spec.inputs[name].default
        title = (node.get("_meta") or {}).get("title") or cls.display_name or node["class_type"]
        out[key] = {**node, "inputs": inputs, "_meta": {"title": title}}
    return out


def check_canvas(ui: dict) -> None:
    """The structure ComfyUI's canvas reads: links agree with the nodes' slots."""
    assert ui["version"] == 0.4 and ui["last_link_id"] == len(ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, origin, o_slot, target, t_slot, type_name in ui["links"]:
        assert link_id in nodes[origin]["outputs"][o_slot]["links"]
        assert nodes[target]["inputs"][t_slot]["link"] == link_id
        assert type_name == nodes[origin]["outputs"][o_slot]["type"]
        assert nodes[origin]["pos"][0] < nodes[target]["pos"][0]  # laid out left to right
    for node in ui["nodes"]:
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        assert node["properties"]["Node name for S&R"] == node["type"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_to_ui_to_api_round_trips(path, registry):
    api = load(path)
    ui = api_to_ui(api, registry)
    check_canvas(ui)
    back, warnings = ui_to_api(ui, registry)
    assert warnings == []
    assert back == with_defaults(api, registry)
    again, _ = ui_to_api(api_to_ui(back, registry), registry)
    assert again == back and list(again) == list(back)  # a second trip changes nothing


def test_api_to_ui_writes_widgets_in_order_with_the_seed_control(registry):
    ui = api_to_ui(load(ROOT / "workflows" / "comfy_img2img.json"), registry)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[3]["widgets_values"] == [42, "fixed", 20, 7.5, "euler", "normal", 0.6]
    assert nodes[10]["widgets_values"] == ["images/red_circle_on_blue.png", "image"]
    assert [i["name"] for i in nodes[3]["inputs"]] == [
        "model",
        "positive",
        "negative",
        "latent_image",
    ]
    assert "title" not in nodes[4]  # the display name
    assert nodes[6]["title"] == "CLIP Text Encode (Positive)"


def test_a_linked_widget_becomes_an_input_slot(registry):
    api = load(DATA / "converted_widget.api.json")
    ui = api_to_ui(api, registry)
    check_canvas(ui)
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    seed = next(i for i in sampler["inputs"] if i["name"] == "seed")
    assert seed["widget"] == {"name": "seed"} and seed["link"] is not None
    assert ui_to_api(ui, registry)[0] == api


def with_reroutes(api: dict, **listed: dict) -> dict:
    """The API workflow with `_meta.reroutes` on some nodes, as nodegraph's canvas keeps them."""
    api = json.loads(json.dumps(api))
    for key, reroutes in listed.items():
        api[key]["_meta"]["reroutes"] = reroutes
    return api


def links_of(ui: dict) -> set[tuple]:
    """A canvas's links as (origin, slot, target, slot, type), checked against the nodes' slots."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_link_id"] == len(ui["links"])
    out = set()
    for link_id, origin, o_slot, target, t_slot, type_name in ui["links"]:
        assert link_id in nodes[origin]["outputs"][o_slot]["links"]
        assert nodes[target]["inputs"][t_slot]["link"] == link_id
        assert type_name == nodes[origin]["outputs"][o_slot]["type"]
        out.add((origin, o_slot, target, t_slot, type_name))
    return out


CHAIN = [{"id": "4", "pos": [360, 150]}, {"id": "5", "pos": [480, 150.5]}]


def test_api_to_ui_writes_the_reroutes_the_canvas_keeps(registry):
    """`_meta.reroutes` (the canvas's record of the Reroute nodes on an input's link) becomes
    ComfyUI Reroute nodes: a chain of two, the second fanning out to both inputs, one node each
    however many links list it; the canvas converts back to the same prompt."""
    oracle = load(DATA / "reroute_chain.api.json")
    api = with_reroutes(oracle, **{"2": {"a": CHAIN, "b": CHAIN}})
    ui = api_to_ui(api, registry)
    reroutes = {n["id"]: n for n in ui["nodes"] if n["type"] == "Reroute"}
    assert {i: n["pos"] for i, n in reroutes.items()} == {4: [360, 150], 5: [480, 150.5]}
    original = {n["id"]: n for n in load(DATA / "reroute_chain.json")["nodes"]}
    for rid, node in reroutes.items():  # the shape ComfyUI saves, typed by what flows through
        same = ("id", "type", "size", "flags", "mode", "properties")
        assert {k: node[k] for k in same} == {k: original[rid][k] for k in same}
        assert [(i["name"], i["type"]) for i in node["inputs"]] == [("", "*")]
        assert [(o["name"], o["type"]) for o in node["outputs"]] == [("", "INT")]
    assert links_of(ui) == {
        (1, 0, 4, 0, "INT"), (4, 0, 5, 0, "INT"), (5, 0, 2, 0, "INT"), (5, 0, 2, 1, "INT"),
        (2, 0, 6, 0, "INT"),
    }  # fmt: skip
    assert ui["last_node_id"] == 6
    assert ui_to_api(ui, registry) == (oracle, [])


def test_reroutes_that_do_not_fit_leave_the_link_straight(registry):
    """A listed reroute never changes what a link runs from: one fed by another output than the
    link's (or listed twice, or unreadable) is left out of that link; one with the id of a real
    node gets a fresh id."""
    oracle = load(DATA / "reroute_chain.api.json")
    clash = [{"id": "6", "pos": [800, 200]}]  # the ShowValue's id
    api = with_reroutes(
        oracle,
        **{
            "2": {"a": CHAIN, "b": CHAIN[1:]},  # b: Reroute 5 straight from node 1? it is fed by 4
            "6": {"value": clash},
        },
    )
    ui = api_to_ui(api, registry)
    assert links_of(ui) == {
        (1, 0, 4, 0, "INT"), (4, 0, 5, 0, "INT"), (5, 0, 2, 0, "INT"), (1, 0, 2, 1, "INT"),
        (2, 0, 7, 0, "INT"), (7, 0, 6, 0, "INT"),
    }  # fmt: skip
    assert ui["last_node_id"] == 7
    assert ui_to_api(ui, registry) == (oracle, [])
    for broken in (
        [CHAIN[0], CHAIN[0]],
        [{"id": "4"}],
        [{"id": True, "pos": [0, 0]}],
        [{"id": "4", "pos": [0, "1"]}],
        {"id": "4", "pos": [0, 0]},
    ):
        ui = api_to_ui(with_reroutes(oracle, **{"6": {"value": broken}}), registry)
        assert not any(n["type"] == "Reroute" for n in ui["nodes"])
        assert ui_to_api(ui, registry) == (oracle, [])


def test_native_reroute_points_the_canvas_keeps_become_numbered_reroute_nodes(registry):
    """The canvas lists a file's native reroute points as `native-<id>`: written back as
    Reroute nodes with fresh numeric ids (ComfyUI's canvas needs numbers), in the listed order."""
    oracle = load(DATA / "reroute_chain.api.json")
    native = [{"id": "native-1", "pos": [800, 200]}, {"id": "native-2", "pos": [880, 240]}]
    ui = api_to_ui(with_reroutes(oracle, **{"6": {"value": native}}), registry)
    reroutes = {n["id"]: n["pos"] for n in ui["nodes"] if n["type"] == "Reroute"}
    assert reroutes == {7: [800, 200], 8: [880, 240]}
    assert (2, 0, 7, 0, "INT") in links_of(ui) and (8, 0, 6, 0, "INT") in links_of(ui)
    assert ui_to_api(ui, registry) == (oracle, [])


def test_workflows_with_reroutes_round_trip_through_the_canvas_format(registry):
    """The comfy img2img canvas's Reroute (the VAE, to two nodes) kept as the canvas keeps it:
    API -> UI -> API gives the same prompt, and the Reroute where the file has it."""
    ui_file = load(ROOT / "workflows" / "comfy" / "img2img.json")
    (reroute,) = [n for n in ui_file["nodes"] if n["type"] == "Reroute"]
    api, _ = ui_to_api(ui_file, registry)
    stop = [{"id": str(reroute["id"]), "pos": reroute["pos"]}]
    kept = with_reroutes(api, **{"8": {"vae": stop}, "11": {"vae": stop}})
    ui = api_to_ui(kept, registry)
    (written,) = [n for n in ui["nodes"] if n["type"] == "Reroute"]
    assert (written["id"], written["pos"], written["outputs"][0]["type"]) == (12, [420, 420], "VAE")
    assert len(written["outputs"][0]["links"]) == 2
    links_of(ui)
    assert ui_to_api(ui, registry) == (api, [])


def write_png(path: Path, chunks: dict[str, str]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_pngs_give_their_workflow_chunk_else_their_prompt(tmp_path, registry):
    ui = load(DATA / "txt2img_seed_control.json")
    prompt = load(DATA / "txt2img_seed_control.api.json")
    both = write_png(
        tmp_path / "both.png", {"prompt": json.dumps(prompt), "workflow": json.dumps(ui)}
    )
    assert read_workflow_file(both) == ("ui", ui)
    only = write_png(tmp_path / "prompt.png", {"prompt": json.dumps(prompt)})
    assert read_workflow_file(only) == ("api", prompt)
    broken = write_png(tmp_path / "broken.png", {"workflow": "{", "prompt": json.dumps(prompt)})
    assert read_workflow_file(broken)[0] == "api"
    with pytest.raises(WorkflowFileError, match="carries no workflow"):
        read_workflow_file(write_png(tmp_path / "none.png", {"parameters": "x"}))


def test_cli_convert_ui_png_and_api(tmp_path, capsys):
    ui_file = DATA / "primitive_two_seeds.json"
    assert main(["convert", str(ui_file), "--to", "api"]) == 0
    assert json.loads(capsys.readouterr().out) == load(DATA / "primitive_two_seeds.api.json")
    png = write_png(tmp_path / "x.png", {"workflow": ui_file.read_text()})
    out = tmp_path / "out" / "x.json"
    assert main(["convert", str(png), "--to", "api", "-o", str(out)]) == 0
    assert load(out) == load(DATA / "primitive_two_seeds.api.json")
    assert main(["convert", str(png), "--to", "ui"]) == 0
    assert json.loads(capsys.readouterr().out) == load(ui_file)  # the canvas, as it is
    api_file = ROOT / "workflows" / "demo_math.json"
    assert main(["convert", str(api_file), "--to", "ui", "-o", str(tmp_path / "demo.ui.json")]) == 0
    check_canvas(load(tmp_path / "demo.ui.json"))


def test_cli_convert_names_unknown_classes(capsys):
    assert main(["convert", str(DATA / "unknown_classes.json"), "--to", "api"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == load(DATA / "unknown_classes.api.json")
    assert "unknown class 'FancyUpscaler' (node 20)" in captured.err
    assert "unknown class 'SeedEverything' (node 21)" in captured.err


def test_cli_validate_and_run_read_ui_files_and_pngs(tmp_path, capsys):
    ui_file = DATA / "groups_and_native_reroutes.json"
    assert main(["validate", str(ui_file)]) == 0
    assert "valid: 3 nodes" in capsys.readouterr().out
    png = write_png(tmp_path / "math.png", {"workflow": ui_file.read_text()})
    assert main(["validate", str(png)]) == 0
    assert main(["run", str(ui_file), "--out", str(tmp_path), "--quiet"]) == 0
    assert "3: 42" in capsys.readouterr().out
    assert main(["run", str(DATA / "subgraph_nested.json"), "--out", str(tmp_path), "--quiet"]) == 0
    assert "8: 9" in capsys.readouterr().out  # 4 * 2 + 1, the bypassed + 100 left out
    assert main(["validate", str(DATA / "unknown_classes.json")]) == 2
    err = capsys.readouterr().err
    assert "FancyUpscaler" in err and "missing_node_type" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"nodes": [1,\n  2,, 3]}', "is not valid JSON: line 2, column 5"),
        ("[1, 2]", "is not a workflow"),
        ('{"nodes": [], "extra": {}}', "is not a workflow"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    for command in (["convert", str(path), "--to", "api"], ["validate", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_canvas_run_keeps_it_in_the_png_which_converts_back(tmp_path, capsys, registry):
    picture = tmp_path / "pic.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(picture)
    canvas = {
        "last_node_id": 2,
        "last_link_id": 1,
        "nodes": [
            {"id": 1, "type": "LoadImage", "pos": [50, 50], "size": [315, 314], "flags": {},
             "order": 0, "mode": 0, "inputs": [],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1], "slot_index": 0},
                         {"name": "MASK", "type": "MASK", "links": None, "slot_index": 1}],
             "properties": {"Node name for S&R": "LoadImage"},
             "widgets_values": [str(picture), "image"]},
            {"id": 2, "type": "SaveImage", "pos": [450, 50], "size": [315, 270], "flags": {},
             "order": 1, "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
             "outputs": [], "properties": {"Node name for S&R": "SaveImage"},
             "widgets_values": ["copy"]},
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]],
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }  # fmt: skip
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(canvas))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (saved,) = (tmp_path / "out").glob("copy*.png")
    api, _ = ui_to_api(canvas, registry)
    with Image.open(saved) as img:
        assert json.loads(img.text["workflow"]) == canvas
        assert json.loads(img.text["prompt"]) == api
    capsys.readouterr()
    assert main(["convert", str(saved), "--to", "api"]) == 0
    assert json.loads(capsys.readouterr().out) == api
    assert main(["validate", str(saved)]) == 0


def test_proxy_widgets_name_the_promoted_inputs(registry):
    ui = load(DATA / "subgraph_promoted_widgets.json")
    instance = ui["nodes"][2]
    instance["properties"]["proxyWidgets"] = [["3", "steps"], ["-1", "seed"], ["-1", "text"]]
    instance["widgets_values"] = [4, 5, "a blue circle on a black background"]
    api, _ = ui_to_api(ui, registry)
    assert api["20:3"]["inputs"]["seed"] == 5 and api["20:3"]["inputs"]["steps"] == 4
    assert api["20:1"]["inputs"]["text"] == "a blue circle on a black background"


def test_group_node_prefixes_and_inner_reroutes(registry):
    expected = load(DATA / "group_node.api.json")
    ui = load(DATA / "group_node.json")
    ui["nodes"][2]["type"] = "workflow/prompt_and_sample"  # the older separator
    assert ui_to_api(ui, registry)[0] == expected
    ui = load(DATA / "group_node.json")  # the positive prompt through a Reroute inside the group
    definition = ui["extra"]["groupNodes"]["prompt_and_sample"]
    definition["nodes"].append(
        {"id": -1, "type": "Reroute", "pos": [700, 100], "size": [75, 26], "flags": {},
         "order": 3, "mode": 0, "inputs": [{"name": "", "type": "*", "link": None}],
         "outputs": [{"name": "", "type": "CONDITIONING", "links": [], "slot_index": 0}],
         "properties": {"showOutputText": False, "horizontal": False}, "index": 3}
    )  # fmt: skip
    definition["links"][0] = [0, 0, 3, 0, 6, "CONDITIONING"]
    definition["links"].append([3, 0, 2, 1, 9, "CONDITIONING"])
    assert ui_to_api(ui, registry)[0] == expected  # no "30:3": the reroute leaves nothing


def test_malformed_canvases_give_a_workflow_error_not_a_crash(registry):
    import random

    rng = random.Random(7)
    junk = [None, 3, -1, "x", [], {}, [1, 2], {"a": 1}, 1.5, True]

    def mutate(value):
        if isinstance(value, dict) and value:
            key = rng.choice(list(value))
            if rng.random() < 0.3:
                value[key] = rng.choice(junk)
            else:
                mutate(value[key])
        elif isinstance(value, list) and value:
            index = rng.randrange(len(value))
            if rng.random() < 0.3:
                value[index] = rng.choice(junk)
            else:
                mutate(value[index])

    for name in CASES:
        for _ in range(60):
            ui = load(DATA / f"{name}.json")
            for _ in range(rng.randint(1, 4)):
                mutate(ui)
            try:
                api, _ = ui_to_api(ui, registry)
            except WorkflowFileError:
                continue
            json.dumps(api)  # whatever comes out is an API workflow the engine can read
            assert all(isinstance(n["inputs"], dict) for n in api.values())


def test_old_and_odd_widget_values(registry):
    expected = load(DATA / "txt2img_seed_control.api.json")
    ui = load(DATA / "txt2img_seed_control.json")
    sampler = next(n for n in ui["nodes"] if n["id"] == 3)
    sampler["widgets_values"][1] = True  # 2023 files: a boolean for "randomize"
    assert ui_to_api(ui, registry)[0] == expected
    sampler["widgets_values"] = {  # some savers write widgets by name
        "seed": 156680208700286, "steps": 4, "cfg": 7.5, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1, "control_after_generate": "fixed",
    }  # fmt: skip
    assert ui_to_api(ui, registry)[0] == expected
    sampler["widgets_values"] = [[1, 2], "fixed"]  # a list value is wrapped, not a link
    assert ui_to_api(ui, registry)[0]["3"]["inputs"]["seed"] == {"__value__": [1, 2]}


def test_the_upload_button_comes_after_the_required_widgets(registry):
    slots = widget_slots(registry.get("LoadImageMask").spec)
    assert slots == [("image", None), ("channel", None), ("image", "upload")]
    assert widget_slots(registry.get("LoadImage").spec) == [("image", None), ("image", "upload")]


def test_api_to_ui_keeps_the_canvas_positions_it_is_given(registry):
    api = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64,
              "batch_size": 1}, "_meta": {"pos": [123, 456]}},  # fmt: skip
        "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0]}},
    }
    nodes = {n["id"]: n for n in api_to_ui(api, registry)["nodes"]}
    assert nodes[1]["pos"] == [123, 456]
    assert nodes[2]["pos"] != [123, 456]  # laid out by depth
