"""The command line: run / validate / convert / nodes / models / serve.

Exit codes: 0 ok, 1 a node failed at run time, 2 invalid input (workflow, arguments, files),
130 interrupted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cache import Cache
from .context import RunSettings
from .errors import ValidationFailed
from .executor import Executor, RunResult
from .progress import ConsoleDisplay
from .registry import Registry, default_registry
from .ui_format import WorkflowFileError, api_to_ui, read_workflow_file, to_api
from .workflow import unwrap

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad argument or unreadable file: exit code 2 with a one-line message."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.command(args) or 0)
    except UsageError as exc:
        print(f"nodegraph: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ValidationFailed as exc:
        _print_validation(exc)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("nodegraph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodegraph", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a workflow (API or UI JSON, or a PNG that carries one)")
    run.add_argument("workflow", type=Path)
    run.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="ID.INPUT=VALUE",
        help="override one input (VALUE is JSON, or else plain text)",
    )
    run.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="ID.INPUT=V1,V2,...",
        help="run once per value, in one process (several sweeps: every combination)",
    )
    run.add_argument("--out", type=Path, default=Path("output"), help="folder for saved images")
    run.add_argument("--report", type=Path, help="write a JSON report of every run here")
    run.add_argument("--cache-mb", type=int, default=4096, help="cache budget in MiB")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    _add_model_options(run)
    run.set_defaults(command=cmd_run)

    validate = sub.add_parser("validate", help="check a workflow without running it")
    validate.add_argument("workflow", type=Path)
    validate.add_argument("--json", action="store_true", help="errors in ComfyUI's JSON shape")
    _add_model_options(validate)
    validate.set_defaults(command=cmd_validate)

    convert = sub.add_parser(
        "convert", help="convert a workflow between ComfyUI's API and UI (canvas) formats"
    )
    convert.add_argument("workflow", type=Path, help="API or UI JSON, or a PNG that carries one")
    convert.add_argument("--to", required=True, choices=("api", "ui"), help="the format to write")
    convert.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    convert.set_defaults(command=cmd_convert)

    nodes = sub.add_parser("nodes", help="list the node classes")
    nodes.add_argument("--json", action="store_true", help="the catalogue (/object_info shape)")
    nodes.set_defaults(command=cmd_nodes)

    models = sub.add_parser("models", help="list the models found")
    models.add_argument("--json", action="store_true")
    _add_model_options(models)
    models.set_defaults(command=cmd_models)

    serve = sub.add_parser("serve", help="start the ComfyUI-compatible server")
    try:
        from server.cli import add_arguments
        from server.cli import run as run_server
    except ImportError as exc:  # the server package is optional for the engine
        reason = str(exc)
        serve.set_defaults(command=lambda _: _missing("server", reason))
    else:
        add_arguments(serve)
        serve.set_defaults(command=run_server)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--models, --device, --vram-budget and --lowvram (the CLI's and the server's)."""
    parser.add_argument(
        "--models",
        action="append",
        default=[],
        metavar="DIR|YAML",
        help="a models folder (ComfyUI's models/ layout or flat) or a ComfyUI "
        "extra_model_paths.yaml (repeatable; also $NODEGRAPH_MODELS)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    parser.add_argument(
        "--vram-budget",
        type=float,
        default=None,
        metavar="GB",
        help="device memory for models: those not in use move to the CPU past it (on the "
        "CPU: memory for their weights, read again from their files when needed)",
    )
    parser.add_argument(
        "--lowvram", action="store_true", help="keep each model on the device only while it runs"
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load .ckpt/.pt/.bin weights (torch.load(weights_only=True))",
    )


def _missing(what: str, reason: str) -> int:
    raise UsageError(f"the {what} is not available: {reason}")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Settings for the node library, from the command line."""
    return {
        "models": list(getattr(args, "models", [])),
        "device": getattr(args, "device", "auto"),
        "allow_pickle": getattr(args, "allow_pickle", False),
        "vram_budget": getattr(args, "vram_budget", None),
        "lowvram": getattr(args, "lowvram", False),
        "threads": getattr(args, "threads", 0),
        "output_dir": str(args.out) if getattr(args, "out", None) else None,
    }


def _registry(args: argparse.Namespace) -> Registry:
    registry = default_registry()
    try:
        registry.configure(_options(args))
    except ValueError as exc:  # a node module refusing the settings (a missing models folder)
        raise UsageError(str(exc)) from exc
    return registry


def _read_any(path: Path) -> tuple[str, Any]:
    """("api" | "ui", data) from an API or UI JSON file or a PNG carrying a workflow."""
    try:
        return read_workflow_file(path)
    except WorkflowFileError as exc:
        raise UsageError(str(exc)) from None


def _read_workflow(
    path: Path, registry: Callable[[], Registry]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The API-format workflow in a file (a UI file or PNG converted with the registry that
    `registry()` gives), and the UI workflow it came from (None for API files). Conversion
    warnings go to standard error."""
    kind, data = _read_any(path)
    if kind == "api":
        return unwrap(data), None
    try:
        api, warnings = to_api(kind, data, registry())
    except WorkflowFileError as exc:
        raise UsageError(f"{path}: {exc}") from None
    for warning in warnings:
        print(f"nodegraph: {path.name}: {warning}", file=sys.stderr)
    return api, data


def parse_assignment(text: str, option: str) -> tuple[str, str, str]:
    """`ID.INPUT=VALUE` -> (id, input, raw value)."""
    key, sep, value = text.partition("=")
    node_id, dot, name = key.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise UsageError(f"{option} {text!r}: expected ID.INPUT=VALUE")
    return node_id, name, value


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (numbers, true, lists), else the plain text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_value(workflow: dict[str, Any], node_id: str, name: str, value: Any, option: str) -> None:
    node = workflow.get(node_id)
    if not isinstance(node, dict):
        raise UsageError(f"{option} {node_id}.{name}: the workflow has no node {node_id!r}")
    inputs = node.setdefault("inputs", {})
    inputs[name] = {"__value__": value} if isinstance(value, list) and len(value) != 2 else value


def sweep_combinations(sweeps: Sequence[str]) -> list[dict[tuple[str, str], Any]]:
    """Every combination of the --sweep values, in order (one empty combination if none)."""
    axes = []
    for text in sweeps:
        node_id, name, raw = parse_assignment(text, "--sweep")
        values = [parse_value(v) for v in raw.split(",") if v != ""]
        if not values:
            raise UsageError(f"--sweep {text!r}: no values")
        axes.append([((node_id, name), v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def _settings(args: argparse.Namespace, base_dir: Path | None) -> RunSettings:
    out = args.out.resolve()
    return RunSettings(
        output_dir=out,
        temp_dir=out / "temp",
        base_dir=base_dir,
        options={
            "models": list(args.models),
            "device": args.device,
            "allow_pickle": args.allow_pickle,
        },
    )


def _lazy_registry(args: argparse.Namespace) -> Callable[[], Registry]:
    """The configured registry, built once on first use (a canvas to convert, or the run)."""
    built: list[Registry] = []

    def registry() -> Registry:
        if not built:
            built.append(_registry(args))
        return built[0]

    return registry


def cmd_run(args: argparse.Namespace) -> int:
    registry = _lazy_registry(args)
    workflow, canvas = _read_workflow(args.workflow, registry)
    for text in args.sets:
        node_id, name, raw = parse_assignment(text, "--set")
        apply_value(workflow, node_id, name, parse_value(raw), "--set")
    combos = sweep_combinations(args.sweeps)
    for combo in combos:  # check every sweep target before the first run
        for (node_id, name), value in combo.items():
            apply_value(json.loads(json.dumps(workflow)), node_id, name, value, "--sweep")
    extra: dict[str, Any] = {}
    if canvas is not None and not args.sets and not args.sweeps:
        extra["extra_pnginfo"] = {"workflow": canvas}  # as ComfyUI: the PNG keeps the canvas
    executor = Executor(registry(), Cache(args.cache_mb * 1024 * 1024))
    settings = _settings(args, args.workflow.resolve().parent)
    display = None if args.quiet else ConsoleDisplay(sys.stderr)
    interrupt = threading.Event()
    previous = signal.signal(signal.SIGINT, _interrupt_handler(interrupt))
    reports, exit_code = [], EXIT_OK
    try:
        for index, combo in enumerate(combos):
            current = json.loads(json.dumps(workflow))
            for (node_id, name), value in combo.items():
                apply_value(current, node_id, name, value, "--sweep")
            label = ", ".join(f"{k[0]}.{k[1]}={v}" for k, v in combo.items())
            if display and label:
                display.heading(f"run {index + 1}/{len(combos)}: {label}")
            plan = executor.validate(current, settings)
            result = executor.run(
                plan,
                settings,
                on_event=display,
                interrupt=interrupt,
                extra={**extra, "parameters": {f"{k[0]}.{k[1]}": v for k, v in combo.items()}},
            )
            files = output_files(result, settings)
            for path in files:
                print(path)
            for node_id, ui in result.ui.items():
                for text in ui.get("text", []):
                    print(f"{node_id}: {text}")
            reports.append(_run_report(result, combo, files))
            if result.status == "interrupted":
                exit_code = EXIT_INTERRUPTED
                break
            if result.status == "failed":
                exit_code = EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
        if args.report:
            stats = executor.cache.stats()
            report = {
                "runs": reports,
                "cache": {
                    "hits": stats.hits,
                    "misses": stats.misses,
                    "bytes": stats.bytes,
                    "entries": stats.entries,
                },
            }
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2, default=str))
    return exit_code


def _interrupt_handler(flag: threading.Event) -> Any:
    def handle(signum: int, frame: Any) -> None:
        if flag.is_set():  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        flag.set()
        print(
            "\nnodegraph: stopping after the current step (Ctrl-C again to abort)", file=sys.stderr
        )

    return handle


def output_files(result: RunResult, settings: RunSettings) -> list[str]:
    """Paths of the images output nodes wrote or showed in this run."""
    folders = {"output": settings.output_dir, "temp": settings.temp_dir}
    files = []
    for ui in result.ui.values():
        for image in ui.get("images", []):
            folder = folders.get(image.get("type", "output"), settings.output_dir)
            files.append(str(folder / image.get("subfolder", "") / image["filename"]))
    return files


def _run_report(
    result: RunResult, combo: dict[tuple[str, str], Any], files: list[str]
) -> dict[str, Any]:
    return {
        "values": {f"{k[0]}.{k[1]}": v for k, v in combo.items()},
        "status": result.status,
        "wall_seconds": round(result.seconds, 6),
        "executed": result.executed,
        "cached": result.cached,
        "node_seconds": {k: round(v, 6) for k, v in result.node_seconds.items()},
        "outputs": files,
        "text": {n: ui["text"] for n, ui in result.ui.items() if "text" in ui},
        "warnings": [{"node": w.node_id, "message": w.message} for w in result.warnings],
        "error": None
        if result.error is None
        else {
            "node": result.error.node_id,
            "class_type": result.error.class_type,
            "message": result.error.message,
        },
    }


def cmd_validate(args: argparse.Namespace) -> int:
    registry = _lazy_registry(args)
    workflow, _ = _read_workflow(args.workflow, registry)
    try:
        settings = RunSettings(base_dir=args.workflow.resolve().parent)
        plan = Executor(registry()).validate(workflow, settings)
    except ValidationFailed as exc:
        if args.json:
            print(json.dumps(exc.comfy_body(), indent=2, default=str))
            return EXIT_INVALID
        raise
    print(f"valid: {len(workflow)} nodes, {len(plan.order)} to run, outputs {plan.outputs}")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    kind, data = _read_any(args.workflow)
    registry = default_registry()
    warnings: list[str] = []
    try:
        if args.to == "api":
            result, warnings = to_api(kind, data, registry)
        elif kind == "ui":
            result = data
        else:
            result = api_to_ui(unwrap(data), registry)
    except (WorkflowFileError, ValidationFailed) as exc:
        reason = exc.errors[0].message if isinstance(exc, ValidationFailed) else str(exc)
        raise UsageError(f"{args.workflow}: {reason}") from None
    for warning in warnings:
        print(f"nodegraph: {args.workflow.name}: {warning}", file=sys.stderr)
    text = json.dumps(result, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc}") from None
    count = len(result["nodes"]) if args.to == "ui" else len(result)
    print(f"{args.output}: {count} nodes ({args.to} format)", file=sys.stderr)
    return EXIT_OK


def _print_validation(exc: ValidationFailed) -> None:
    print(f"nodegraph: the workflow is invalid ({len(exc.errors)} problem(s)):", file=sys.stderr)
    for error in exc.errors:
        print(f"  {error}", file=sys.stderr)


def cmd_nodes(args: argparse.Namespace) -> int:
    catalogue = _registry(args).catalogue()
    if args.json:
        print(json.dumps(catalogue, indent=2, default=str))
        return EXIT_OK
    for name, info in catalogue.items():
        inputs = ", ".join(
            [
                *info["input_order"]["required"],
                *(f"[{n}]" for n in info["input_order"].get("optional", [])),
            ]
        )
        outputs = ", ".join(info["output"]) or ("(output node)" if info["output_node"] else "-")
        print(f"{name:<24} {info['category']:<22} ({inputs}) -> {outputs}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    try:
        from nodes.loading.checkpoints import describe
        from nodes.loading.folders import ModelsConfigError, check_root, list_models
    except ImportError as exc:
        return _missing("model library", str(exc))
    try:
        for root in args.models:
            check_root(root)
        found = [{**m.as_dict(), "family": describe(m)} for m in list_models(None, args.models)]
    except ModelsConfigError as exc:
        raise UsageError(str(exc)) from exc
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        for m in found:
            row = f"{m['kind']:<14} {m['name']:<36} {m['family']:<16} {m['format']:<12}"
            print(row, m["path"])
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
