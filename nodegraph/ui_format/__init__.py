"""ComfyUI's canvas ("UI", litegraph) workflow format, to and from the API format.

    ui_to_api(ui, registry) -> (api, warnings)   # what ComfyUI's frontend queues for a canvas
    api_to_ui(api, registry) -> ui               # a canvas file ComfyUI can open (schema 0.4)
    read_workflow_file(path) -> (kind, data)     # API JSON, UI JSON, or a ComfyUI / nodegraph PNG

The conversion follows the behaviour of ComfyUI's frontend (its `graphToPrompt`): a node's
`widgets_values` are the values of its widget inputs in the class's input order (required, then
optional; sockets skipped), with one frontend-only value after every seed-like INT (the
"control after generate" mode) and after an image-upload input; a converted widget fed by a link
takes the link (or the value of the PrimitiveNode feeding it); Reroute nodes are followed to the
real output; Note, MarkdownNote, PrimitiveNode and Reroute never reach the API; a muted node
(mode 2) is dropped with every input linked from it; a bypassed node (mode 4) is dropped and its
consumers take what feeds its input of the same type; legacy group nodes (`extra.groupNodes`) and
subgraphs (`definitions.subgraphs`) are flattened into ids "<outer id>:<inner id>"; `_meta.title`
is the node's title. Schema 0.4 (links as arrays) and schema 1 (links as objects) are read.
The other way, a node's `_meta.pos` places it, and `_meta.reroutes` (where nodegraph's canvas
keeps the Reroute nodes on an input's link) gives back those Reroute nodes (reroutes.py).

The engine core knows no node classes: the registry passed in gives each class's inputs and
outputs (`Node.spec`), which is all the conversion needs.
"""

from .files import WorkflowFileError, detect_format, parse_json, png_workflow, read_workflow_file
from .slots import is_seed, ordered_inputs, widget_slots
from .to_api import to_api, ui_to_api, unknown_classes
from .to_ui import api_to_ui

__all__ = [
    "WorkflowFileError",
    "api_to_ui",
    "detect_format",
    "is_seed",
    "ordered_inputs",
    "parse_json",
    "png_workflow",
    "read_workflow_file",
    "to_api",
    "ui_to_api",
    "unknown_classes",
    "widget_slots",
]
