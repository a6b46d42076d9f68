import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import {
  Background,
  BackgroundVariant,
  Controls,
  MiniMap,
  ReactFlow,
  ViewportPortal,
  applyEdgeChanges,
  applyNodeChanges,
  useReactFlow,
  type Connection,
  type EdgeChange,
  type FinalConnectionState,
  type NodeChange,
} from '@xyflow/react';
import { parseCatalogue, compatible, typeColour, type Catalogue, type NodeDef } from './catalogue';
import { EditorContext, type EditorApi } from './editor-context';
import { GraphNode } from './GraphNode';
import { RerouteNode } from './RerouteNode';
import { REROUTE_INPUT, REROUTE_SIZE, downstream, isReroute, rerouteNode, rerouteType } from './reroutes';
import { HistoryPanel } from './History';
import { Palette } from './Palette';
import { runStore, type NodeRun } from './runstate';
import { HttpError, connectSocket, convertWorkflow, getObjectInfo, getQueueRemaining, interrupt, queuePrompt, queueSweep, uploadImage, viewUrl } from './api';
import {
  fromApi,
  handleInput,
  handleOutput,
  makeEdge,
  newNodeData,
  nextId,
  toApi,
  unwrapWorkflow,
  workflowJsonFromPng,
  resolveWorkflow,
  sweepAxes,
  canvasGroups,
  withCanvasExtras,
  type ApiWorkflow,
  type CanvasGroup,
  type GEdge,
  type GNode,
  type Graph,
} from './workflow';
// One source for the default graph: the repository's main job, bundled at build time.
import shippedWorkflow from '../../workflows/txt2img_img2img.json';

export const DEFAULT_WORKFLOW = shippedWorkflow as unknown as ApiWorkflow;

const nodeTypes = { graph: GraphNode, reroute: RerouteNode };
const DELETE_KEYS = ['Backspace', 'Delete'];
const DEFAULT_EDGE_OPTIONS = { type: 'default' };
const PRO_OPTIONS = { hideAttribution: true };
const minimapColour = (n: { id: string }) => (runStore.get(n.id).status === 'error' ? '#e55353' : '#5c6b8a');
const STORAGE_KEY = 'nodegraph.workflow';
const LIVE_KEY = 'nodegraph.live';
const GROUPS_KEY = 'nodegraph.groups';
const clientId = `web-${Math.random().toString(36).slice(2, 10)}`;

interface PendingLink {
  nodeId: string;
  handleId: string;
  /** 'source' when dragged from an output, 'target' from an input. */
  side: 'source' | 'target';
  type: string;
}

/** The socket of `def` a pending link would attach to: the first compatible one. */
function socketFor(def: NodeDef, link: PendingLink): { handle: string; index: number } | null {
  if (link.side === 'source') {
    const inputs = [...def.inputs.filter((i) => !i.literal), ...def.inputs.filter((i) => i.literal)];
    const input = inputs.find((i) => compatible(link.type, i.type) && (link.type !== '*' || i.type === '*' || !i.literal));
    return input ? { handle: `in:${input.name}`, index: -1 } : null;
  }
  const index = def.outputs.findIndex((o) => compatible(o.type, link.type));
  return index >= 0 ? { handle: `out:${index}`, index } : null;
}

interface Banner {
  kind: 'error' | 'info';
  text: string;
  details?: string[];
}

function isEditable(t: EventTarget | null) {
  const el = t as HTMLElement | null;
  return !!el && (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA' || el.tagName === 'SELECT' || el.isContentEditable);
}

function download(name: string, text: string) {
  const url = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function App() {
  const [catalogue, setCatalogue] = useState<Catalogue | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [nodes, setNodes] = useState<GNode[]>([]);
  const [edges, setEdges] = useState<GEdge[]>([]);
  const [palette, setPalette] = useState<{
    screen: { x: number; y: number };
    flow: { x: number; y: number };
    /** Opened by dropping a link on empty canvas: the new node gets connected to it. */
    link?: PendingLink;
  } | null>(null);
  const [banner, setBanner] = useState<Banner | null>(null);
  const [queueRemaining, setQueueRemaining] = useState(0);
  const [connected, setConnected] = useState(false);
  const [running, setRunning] = useState(false);
  const [finishedRuns, setFinishedRuns] = useState(0);
  const [showHistory, setShowHistory] = useState(false);
  const [uploads, setUploads] = useState<Record<string, string[]>>({});
  /** The groups of the canvas file opened last (drawn behind the nodes, saved by "Save UI"). */
  const [groups, setGroups] = useState<CanvasGroup[]>(() => {
    try {
      return canvasGroups({ groups: JSON.parse(localStorage.getItem(GROUPS_KEY) ?? '[]') });
    } catch {
      return [];
    }
  });
  const groupsRef = useRef(groups);
  groupsRef.current = groups;
  useEffect(() => localStorage.setItem(GROUPS_KEY, JSON.stringify(groups)), [groups]);
  /** "Live": releasing a slider queues the graph again (only the cone below it re-runs). */
  const [live, setLive] = useState(() => localStorage.getItem(LIVE_KEY) !== 'off');
  const liveRef = useRef(live);
  liveRef.current = live;
  const [, setHistoryTick] = useState(0);
  const rf = useReactFlow<GNode, GEdge>();

  const nodesRef = useRef(nodes);
  const edgesRef = useRef(edges);
  nodesRef.current = nodes;
  edgesRef.current = edges;
  const catRef = useRef<Catalogue>({});
  const uploadsRef = useRef(uploads);
  uploadsRef.current = uploads;

  // ---- history -------------------------------------------------------------------------------
  const undoStack = useRef<Graph[]>([]);
  const redoStack = useRef<Graph[]>([]);
  const lastEdit = useRef<{ key: string; at: number } | null>(null);
  const remember = useCallback((coalesceKey?: string) => {
    const now = Date.now();
    if (coalesceKey && lastEdit.current?.key === coalesceKey && now - lastEdit.current.at < 1500) {
      lastEdit.current.at = now;
      return;
    }
    lastEdit.current = coalesceKey ? { key: coalesceKey, at: now } : null;
    undoStack.current.push({ nodes: nodesRef.current, edges: edgesRef.current });
    if (undoStack.current.length > 200) undoStack.current.shift();
    redoStack.current = [];
    setHistoryTick((t) => t + 1);
  }, []);
  const setGraph = useCallback((g: Graph) => {
    nodesRef.current = g.nodes;
    edgesRef.current = g.edges;
    setNodes(g.nodes);
    setEdges(g.edges);
  }, []);
  const undo = useCallback(() => {
    const prev = undoStack.current.pop();
    if (!prev) return;
    redoStack.current.push({ nodes: nodesRef.current, edges: edgesRef.current });
    lastEdit.current = null;
    setGraph(prev);
    setHistoryTick((t) => t + 1);
  }, [setGraph]);
  const redo = useCallback(() => {
    const next = redoStack.current.pop();
    if (!next) return;
    undoStack.current.push({ nodes: nodesRef.current, edges: edgesRef.current });
    lastEdit.current = null;
    setGraph(next);
    setHistoryTick((t) => t + 1);
  }, [setGraph]);

  // ---- loading -------------------------------------------------------------------------------
  const loadApi = useCallback(
    (api: ApiWorkflow, opts: { record?: boolean; fit?: boolean } = {}) => {
      const cat = catRef.current;
      const g = fromApi(api, cat, typeColour);
      if (opts.record !== false) remember();
      runStore.update(() => ({}));
      setGraph(g);
      const unknown = [...new Set(g.nodes.filter((n) => !isReroute(n) && !cat[n.data.classType]).map((n) => n.data.classType))];
      if (unknown.length) setBanner({ kind: 'error', text: `Unknown node types: ${unknown.join(', ')}` });
      if (opts.fit !== false && g.nodes.length) setTimeout(() => rf.fitView({ padding: 0.1, maxZoom: 1 }), 50);
      else if (!g.nodes.length) void rf.setViewport({ x: 0, y: 0, zoom: 1 });
    },
    [remember, rf, setGraph],
  );

  const loadFile = useCallback(
    async (file: File) => {
      try {
        const isPng = file.type === 'image/png' || /\.png$/i.test(file.name);
        const json = isPng ? await workflowJsonFromPng(await file.arrayBuffer()) : JSON.parse(await file.text());
        const { api, warnings, groups: opened } = await resolveWorkflow(json, convertWorkflow);
        loadApi(api);
        setGroups(opened);
        setBanner(
          warnings.length
            ? { kind: 'error', text: `Loaded ${file.name}: ${warnings.join('; ')}` }
            : { kind: 'info', text: `Loaded ${file.name}` },
        );
      } catch (e) {
        setBanner({ kind: 'error', text: `Cannot load ${file.name}: ${(e as Error).message}` });
      }
    },
    [loadApi],
  );

  useEffect(() => {
    let cancelled = false;
    getObjectInfo()
      .then((info) => {
        if (cancelled) return;
        const cat = parseCatalogue(info);
        catRef.current = cat;
        setCatalogue(cat);
        let api: ApiWorkflow = DEFAULT_WORKFLOW;
        try {
          const saved = localStorage.getItem(STORAGE_KEY);
          if (saved) api = unwrapWorkflow(JSON.parse(saved));
        } catch {
          api = DEFAULT_WORKFLOW;
        }
        const g = fromApi(api, cat, typeColour);
        setGraph(g);
        setTimeout(() => rf.fitView({ padding: 0.1, maxZoom: 1 }), 50);
      })
      .catch((e) => !cancelled && setLoadError(String(e?.message ?? e)));
    return () => {
      cancelled = true;
    };
  }, [rf, setGraph]);

  // Information fades by itself; errors stay until dismissed or fixed.
  useEffect(() => {
    if (banner?.kind !== 'info') return;
    const t = setTimeout(() => setBanner((b) => (b === banner ? null : b)), 4000);
    return () => clearTimeout(t);
  }, [banner]);

  // Keep the current graph across reloads.
  useEffect(() => {
    if (!catalogue) return;
    const t = setTimeout(() => {
      try {
        localStorage.setItem(STORAGE_KEY, JSON.stringify(toApi({ nodes, edges }, catalogue)));
      } catch {
        /* storage full or disabled */
      }
    }, 400);
    return () => clearTimeout(t);
  }, [nodes, edges, catalogue]);

  // ---- websocket -----------------------------------------------------------------------------
  const executingRef = useRef<string | null>(null);
  const previewTargets = useRef<string[]>([]);
  /** The running sweep's prompts: their labels ("strength 0.5") and values (one per axis, for
   * an X/Y grid), for the output strips. */
  const sweepRuns = useRef<Map<string, { label: string; values: string[]; axes: string[] }>>(new Map());
  /** The nodes downstream of the swept inputs: only their results differ from run to run. */
  const sweepCone = useRef<Set<string>>(new Set());
  useEffect(() => {
    const clearPreviews = () => {
      runStore.update((s) => {
        const out: Record<string, NodeRun> = {};
        for (const [id, r] of Object.entries(s)) {
          if (r.preview) URL.revokeObjectURL(r.preview);
          out[id] = r.preview ? { ...r, preview: undefined } : r;
        }
        return out;
      });
    };
    const finishExecuting = () => {
      const prev = executingRef.current;
      if (prev && runStore.get(prev).status === 'executing') runStore.patch(prev, { status: 'done' });
      executingRef.current = null;
    };
    // A prompt ends with `executing: null`, or with an error or an interruption (whichever
    // the server sends, each prompt counts once).
    const ended = new Set<string>();
    const endRun = (promptId: unknown) => {
      setRunning(false);
      const key = String(promptId ?? `anon-${ended.size}`);
      if (ended.has(key)) return;
      ended.add(key);
      setFinishedRuns((n) => n + 1);
    };
    return connectSocket(clientId, {
      onState: setConnected,
      onPreview: (blob) => {
        const url = URL.createObjectURL(blob);
        const targets = previewTargets.current.length ? previewTargets.current : executingRef.current ? [executingRef.current] : [];
        runStore.update((s) => {
          const out = { ...s };
          for (const id of targets) {
            const old = out[id]?.preview;
            if (old) URL.revokeObjectURL(old);
            out[id] = { ...(out[id] ?? {}), preview: url };
          }
          return out;
        });
      },
      onMessage: (type, data) => {
        switch (type) {
          case 'status':
            setQueueRemaining(Number(data?.status?.exec_info?.queue_remaining ?? 0));
            break;
          case 'execution_start':
            setRunning(true);
            runStore.update((s) => {
              const out: Record<string, NodeRun> = {};
              for (const [id, r] of Object.entries(s))
                out[id] = { images: r.images, imagesKey: r.imagesKey, texts: r.texts, strip: r.strip };
              return out;
            });
            break;
          case 'execution_cached': {
            // A cached node's ancestors do not run either: mark them too (the server may list
            // only the cached nodes nearest the outputs).
            const cached = new Set<string>((data.nodes ?? []).map(String));
            const stack = [...cached];
            while (stack.length) {
              const id = stack.pop()!;
              for (const e of edgesRef.current) {
                if (e.target === id && !cached.has(e.source)) {
                  cached.add(e.source);
                  stack.push(e.source);
                }
              }
            }
            runStore.update((s) => {
              const out = { ...s };
              for (const id of cached) if (!out[id]?.status) out[id] = { ...(out[id] ?? {}), status: 'cached' };
              return out;
            });
            break;
          }
          case 'executing': {
            finishExecuting();
            if (data.node === null || data.node === undefined) {
              endRun(data.prompt_id);
              previewTargets.current = [];
              clearPreviews();
              break;
            }
            const id = String(data.node);
            executingRef.current = id;
            runStore.patch(id, { status: 'executing', progress: undefined });
            // Live frames show on the running node and on the output nodes it feeds.
            const down = new Set([id]);
            let grew = true;
            while (grew) {
              grew = false;
              for (const e of edgesRef.current) {
                if (down.has(e.source) && !down.has(e.target)) {
                  down.add(e.target);
                  grew = true;
                }
              }
            }
            const cat = catRef.current;
            previewTargets.current = nodesRef.current
              .filter((n) => down.has(n.id) && (n.id === id || cat[n.data.classType]?.outputNode))
              .map((n) => n.id);
            break;
          }
          case 'nodegraph.warning':
            if (data.node !== undefined && data.node !== null) {
              const id = String(data.node);
              runStore.patch(id, { warnings: [...(runStore.get(id).warnings ?? []), String(data.message)] });
            }
            break;
          case 'progress':
            if (data.node !== undefined && data.node !== null)
              runStore.patch(String(data.node), { progress: { value: Number(data.value), max: Number(data.max) } });
            break;
          case 'executed': {
            const id = String(data.node);
            const images = data.output?.images;
            const old = runStore.get(id).preview;
            if (old) URL.revokeObjectURL(old);
            previewTargets.current = previewTargets.current.filter((t) => t !== id);
            const swept = sweepRuns.current.get(String(data.prompt_id));
            const strip = runStore.get(id).strip ?? [];
            runStore.patch(id, {
              preview: undefined,
              ...(Array.isArray(images) ? { images, imagesKey: String(data.prompt_id ?? Date.now()) } : {}),
              ...(Array.isArray(images) && swept !== undefined && sweepCone.current.has(id)
                ? { strip: [...strip, { ...swept, images, key: String(data.prompt_id) }] }
                : {}),
              ...(Array.isArray(data.output?.text) ? { texts: data.output.text.map(String) } : {}),
            });
            break;
          }
          case 'execution_error': {
            const id = String(data.node_id ?? '');
            const msg = `${data.exception_type ? `${data.exception_type}: ` : ''}${data.exception_message ?? 'failed'}`;
            if (id) runStore.patch(id, { status: 'error', errors: [{ message: msg }], progress: undefined });
            setBanner({ kind: 'error', text: `Node #${id} (${data.node_type ?? '?'}) failed: ${msg}` });
            executingRef.current = null;
            endRun(data.prompt_id);
            break;
          }
          case 'execution_interrupted':
            finishExecuting();
            endRun(data.prompt_id);
            setBanner({ kind: 'info', text: 'Interrupted.' });
            break;
        }
      },
    });
  }, []);

  useEffect(() => {
    getQueueRemaining().then(setQueueRemaining, () => {});
  }, []);

  // ---- queue ---------------------------------------------------------------------------------
  const queue = useCallback(async () => {
    const cat = catRef.current;
    const graph = { nodes: nodesRef.current, edges: edgesRef.current };
    const api = toApi(graph, cat);
    runStore.update((s) => {
      const out: Record<string, NodeRun> = {};
      for (const [id, r] of Object.entries(s)) out[id] = r.errors ? { ...r, errors: undefined, status: undefined } : r;
      return out;
    });
    try {
      // The prompt keeps `_meta` (title, layout): the engine ignores it, and SaveImage embeds the
      // prompt, so a saved picture restores the canvas as it was.
      // Clear an old error before queueing: a run that fails fast may report its own error
      // before the queue request has even answered.
      setBanner((b) => (b?.kind === 'error' ? null : b));
      const axes = sweepAxes(graph.nodes);
      if (axes.length > 2) throw new Error('a sweep has at most two inputs (an X/Y grid)');
      runStore.update((s) => {
        const out: Record<string, NodeRun> = {};
        for (const [id, r] of Object.entries(s)) out[id] = r.strip ? { ...r, strip: undefined } : r;
        return out;
      });
      if (axes.length) {
        const res = await queueSweep(api, clientId, api, axes);
        const names = axes.map((a) => a.input);
        const cone = new Set(axes.map((a) => a.node));
        for (let grew = true; grew; ) {
          grew = false;
          for (const e of graph.edges)
            if (cone.has(e.source) && !cone.has(e.target)) {
              cone.add(e.target);
              grew = true;
            }
        }
        sweepCone.current = cone;
        sweepRuns.current = new Map(
          (res.prompt_ids as string[]).map((pid, i) => {
            const values = (res.values[i] as unknown[]).map(String);
            return [pid, { label: values.map((v, k) => `${names[k]} ${v}`).join(' · '), values, axes: names }];
          }),
        );
      } else {
        sweepRuns.current = new Map();
        await queuePrompt(api, clientId, api);
      }
      // Seeds set to change after each queue.
      const next = nodesRef.current.map((n) => {
        const ctl = n.data.control;
        if (!ctl) return n;
        let values = n.data.values;
        for (const [input, mode] of Object.entries(ctl)) {
          const v = Number(values[input]);
          if (mode === 'randomize') values = { ...values, [input]: Math.floor(Math.random() * 2 ** 32) };
          else if (mode === 'increment') values = { ...values, [input]: (Number.isFinite(v) ? v : 0) + 1 };
        }
        return values === n.data.values ? n : { ...n, data: { ...n.data, values } };
      });
      if (next.some((n, i) => n !== nodesRef.current[i])) setGraph({ nodes: next, edges: edgesRef.current });
    } catch (e) {
      if (e instanceof HttpError && e.body && typeof e.body === 'object') {
        const err = e.body.error ?? {};
        const nodeErrors: Record<string, any> = e.body.node_errors ?? {};
        const details: string[] = [];
        runStore.update((s) => {
          const out = { ...s };
          for (const [id, ne] of Object.entries(nodeErrors)) {
            const issues = (ne.errors ?? []).map((x: any) => ({
              message: `${x.message ?? x.type}${x.details ? `: ${x.details}` : ''}`,
              input: x.extra_info?.input_name,
            }));
            for (const i of issues) details.push(`#${id} ${ne.class_type ?? ''}${i.input ? ` · ${i.input}` : ''}: ${i.message}`);
            out[id] = { ...(out[id] ?? {}), status: 'error', errors: issues };
          }
          return out;
        });
        if (err.type && !Object.keys(nodeErrors).length && err.extra_info?.node_id) {
          runStore.patch(String(err.extra_info.node_id), { status: 'error', errors: [{ message: err.message }] });
        }
        setBanner({ kind: 'error', text: `Cannot queue: ${err.message ?? e.message}${err.details ? ` (${err.details})` : ''}`, details });
      } else {
        setBanner({ kind: 'error', text: `Cannot queue: ${(e as Error).message}` });
      }
    }
  }, [setGraph]);

  // ---- editing -------------------------------------------------------------------------------
  const editor: EditorApi | null = useMemo(() => {
    if (!catalogue) return null;
    const patchNode = (id: string, f: (d: GNode['data']) => GNode['data']) =>
      setNodes((ns) => {
        const out = ns.map((n) => (n.id === id ? { ...n, data: f(n.data) } : n));
        nodesRef.current = out;
        return out;
      });
    return {
      catalogue,
      setValue: (id, input, value) => {
        remember(`${id}/${input}`);
        patchNode(id, (d) => ({ ...d, values: { ...d.values, [input]: value } }));
        const r = runStore.get(id);
        if (r.errors?.some((e) => e.input === input))
          runStore.patch(id, { errors: r.errors.filter((e) => e.input !== input) });
      },
      setTitle: (id, title) => {
        remember();
        patchNode(id, (d) => {
          const { title: _old, ...rest } = d;
          return title.trim() ? { ...rest, title: title.trim() } : rest;
        });
      },
      setControl: (id, input, mode) => {
        remember();
        patchNode(id, (d) => ({ ...d, control: { ...(d.control ?? {}), [input]: mode } }));
      },
      setSweep: (id, input, text) => {
        patchNode(id, (d) => {
          const sweep = { ...(d.sweep ?? {}) };
          if (text === null) delete sweep[input];
          else sweep[input] = text;
          return { ...d, sweep };
        });
      },
      requeue: () => {
        if (!liveRef.current) return;
        // Let the last slider value land in state before the graph is read.
        setTimeout(() => void queue(), 0);
      },
      upload: async (id, input, file) => {
        try {
          const res = await uploadImage(file);
          const name = res.subfolder ? `${res.subfolder}/${res.name}` : res.name;
          const cls = nodesRef.current.find((n) => n.id === id)?.data.classType ?? '';
          const key = `${cls}/${input}`;
          setUploads((u) => ({ ...u, [key]: [...new Set([...(u[key] ?? []), name])] }));
          remember();
          patchNode(id, (d) => ({ ...d, values: { ...d.values, [input]: name } }));
        } catch (e) {
          setBanner({ kind: 'error', text: `Upload failed: ${(e as Error).message}` });
        }
      },
      extraChoices: (cls, input) => uploadsRef.current[`${cls}/${input}`] ?? [],
      compareFor: (id) => {
        // The picture an output's chain started from: a LoadImage upstream, else the picture of
        // another output node that shares its upstream (txt2img before its img2img refinement).
        const edges = edgesRef.current;
        const up = (start: string) => {
          const seen = new Set<string>();
          const stack = [start];
          while (stack.length) {
            const n = stack.pop()!;
            for (const e of edges) if (e.target === n && !seen.has(e.source)) stack.push((seen.add(e.source), e.source));
          }
          return seen;
        };
        const mine = up(id);
        for (const n of nodesRef.current) {
          if (mine.has(n.id) && n.data.classType === 'LoadImage' && n.data.values.image)
            return viewUrl({ filename: String(n.data.values.image), type: 'input' });
        }
        for (const n of nodesRef.current) {
          const r = runStore.get(n.id);
          if (n.id === id || !r.images?.length || mine.has(n.id)) continue;
          if ([...up(n.id)].some((a) => mine.has(a))) return viewUrl(r.images[0], r.imagesKey);
        }
        return null;
      },
    };
    // `uploads` is read through a ref; it is a dependency so that dropdowns show new uploads.
  }, [catalogue, remember, queue, uploads]);

  const editorRef = useRef(editor);
  editorRef.current = editor;

  const onNodesChange = useCallback((changes: NodeChange<GNode>[]) => {
    setNodes((ns) => {
      const out = applyNodeChanges(changes, ns);
      nodesRef.current = out;
      return out;
    });
  }, []);
  const onEdgesChange = useCallback((changes: EdgeChange<GEdge>[]) => {
    setEdges((es) => {
      const out = applyEdgeChanges(changes, es);
      edgesRef.current = out;
      return out;
    });
  }, []);

  /** The types a link would join. A reroute passes on the type that feeds it, and takes any
   * type its downstream inputs all take (else `inp` is the first one that refuses it). */
  const socketTypes = useCallback((c: { source: string; sourceHandle?: string | null; target: string; targetHandle?: string | null }) => {
    const cat = catRef.current;
    const byId = new Map(nodesRef.current.map((n) => [n.id, n]));
    const outputType = (n: GNode, h: string | null | undefined) => cat[n.data.classType]?.outputs[handleOutput(h)]?.type;
    const inputType = (n: GNode | undefined, h: string | null | undefined) =>
      n && cat[n.data.classType]?.inputs.find((i) => i.name === handleInput(h))?.type;
    const src = byId.get(c.source);
    const tgt = byId.get(c.target);
    const out = src && (isReroute(src) ? rerouteType(src.id, byId, edgesRef.current, outputType) : outputType(src, c.sourceHandle));
    if (!tgt || !isReroute(tgt)) return { out, inp: inputType(tgt, c.targetHandle) };
    const fed = downstream(tgt.id, byId, edgesRef.current).map((e) => inputType(byId.get(e.target), e.targetHandle) ?? '*');
    return { out, inp: (out && fed.find((t) => !compatible(out, t))) ?? '*' };
  }, []);

  const createsCycle = useCallback((source: string, target: string) => {
    if (source === target) return true;
    const seen = new Set<string>([target]);
    const stack = [target];
    while (stack.length) {
      const id = stack.pop()!;
      for (const e of edgesRef.current) {
        if (e.source !== id) continue;
        if (e.target === source) return true;
        if (!seen.has(e.target)) {
          seen.add(e.target);
          stack.push(e.target);
        }
      }
    }
    return false;
  }, []);

  const isValidConnection = useCallback(
    (c: Connection | GEdge) => {
      const { out, inp } = socketTypes(c);
      return !!out && !!inp && compatible(out, inp) && !createsCycle(c.source, c.target);
    },
    [socketTypes, createsCycle],
  );

  const onConnect = useCallback(
    (c: Connection) => {
      const { out, inp } = socketTypes(c);
      if (!out || !inp || !compatible(out, inp) || createsCycle(c.source, c.target)) {
        setBanner({ kind: 'error', text: `Cannot connect ${out ?? '?'} to ${inp ?? '?'}` });
        return;
      }
      remember();
      const input = handleInput(c.targetHandle);
      const edge = makeEdge(c.source, handleOutput(c.sourceHandle), c.target, input, out, typeColour(out));
      setEdges((es) => {
        // An input takes one link: a new one replaces the old.
        const next = [...es.filter((e) => !(e.target === c.target && handleInput(e.targetHandle) === input)), edge];
        edgesRef.current = next;
        return next;
      });
    },
    [socketTypes, createsCycle, remember],
  );

  // Dragging a link's end elsewhere moves it; dropping it on empty canvas removes it.
  const reconnected = useRef(true);
  const onReconnect = useCallback(
    (old: GEdge, c: Connection) => {
      reconnected.current = true;
      const { out, inp } = socketTypes(c);
      if (!out || !inp || !compatible(out, inp)) return;
      remember();
      const input = handleInput(c.targetHandle);
      const edge = makeEdge(c.source, handleOutput(c.sourceHandle), c.target, input, out, typeColour(out));
      setEdges((es) => {
        const next = [
          ...es.filter((e) => e.id !== old.id && !(e.target === c.target && handleInput(e.targetHandle) === input)),
          edge,
        ];
        edgesRef.current = next;
        return next;
      });
    },
    [socketTypes, remember],
  );
  const onReconnectEnd = useCallback(
    (_: MouseEvent | TouchEvent, old: GEdge) => {
      if (!reconnected.current) {
        remember();
        setEdges((es) => {
          const next = es.filter((e) => e.id !== old.id);
          edgesRef.current = next;
          return next;
        });
      }
      reconnected.current = true;
    },
    [remember],
  );

  const onConnectEnd = useCallback((event: MouseEvent | TouchEvent, state: FinalConnectionState) => {
    if (!state?.isValid && !state?.toHandle && state?.fromHandle && state?.fromNode) {
      // Dropped on empty canvas: offer the nodes that can take (or give) this link.
      const side: 'source' | 'target' = state.fromHandle.type === 'source' ? 'source' : 'target';
      const c =
        side === 'source'
          ? { source: state.fromNode.id, sourceHandle: state.fromHandle.id, target: '', targetHandle: '' }
          : { source: '', sourceHandle: '', target: state.fromNode.id, targetHandle: state.fromHandle.id };
      const { out, inp } = socketTypes(c);
      const type = side === 'source' ? out : inp;
      const point = 'changedTouches' in event ? event.changedTouches[0] : event;
      const over = event.target as HTMLElement | null;
      if (type && point && over?.closest?.('.react-flow__pane') && !over.closest('.react-flow__node')) {
        const screen = { x: point.clientX, y: point.clientY };
        setPalette({
          screen,
          flow: rf.screenToFlowPosition(screen),
          link: { nodeId: state.fromNode.id, handleId: state.fromHandle.id ?? '', side, type },
        });
      }
      return;
    }
    if (state?.isValid === false && state.toHandle && state.fromHandle && state.fromNode && state.toNode) {
      const fromOutput = state.fromHandle.type === 'source';
      const c = {
        source: fromOutput ? state.fromNode.id : state.toNode.id,
        sourceHandle: fromOutput ? state.fromHandle.id : state.toHandle.id,
        target: fromOutput ? state.toNode.id : state.fromNode.id,
        targetHandle: fromOutput ? state.toHandle.id : state.fromHandle.id,
      };
      const { out, inp } = socketTypes(c);
      setBanner({ kind: 'error', text: `Cannot connect ${out ?? '?'} to ${inp ?? '?'}: the types do not match.` });
    }
  }, [socketTypes, rf]);

  const addNode = useCallback(
    (def: NodeDef, pos: { x: number; y: number }, link?: PendingLink): string => {
      remember();
      const id = nextId(nodesRef.current);
      // A node added for a link dragged from an input goes to the left of the drop point.
      const position = link?.side === 'target' ? { x: pos.x - 280, y: pos.y } : pos;
      const node: GNode = { id, type: 'graph', position, data: newNodeData(def), selected: true };
      setNodes((ns) => {
        const out = [...ns.map((n) => (n.selected ? { ...n, selected: false } : n)), node];
        nodesRef.current = out;
        return out;
      });
      const socket = link && socketFor(def, link);
      if (link && socket) {
        const edge =
          link.side === 'source'
            ? makeEdge(link.nodeId, handleOutput(link.handleId), id, handleInput(socket.handle), link.type, typeColour(link.type))
            : makeEdge(id, socket.index, link.nodeId, handleInput(link.handleId), def.outputs[socket.index].type, typeColour(def.outputs[socket.index].type));
        setEdges((es) => {
          const next = [...es.filter((e) => !(e.target === edge.target && e.targetHandle === edge.targetHandle)), edge];
          edgesRef.current = next;
          return next;
        });
      }
      return id;
    },
    [remember],
  );

  /** A reroute dot where a link was double-clicked (ComfyUI's "Add Reroute"): the link now
   * runs through it, and the queued workflow stays the same. */
  const addReroute = useCallback(
    (edge: GEdge, clientX: number, clientY: number) => {
      remember();
      const id = nextId(nodesRef.current);
      const at = rf.screenToFlowPosition({ x: clientX, y: clientY });
      const pos: [number, number] = [at.x - REROUTE_SIZE.width / 2, at.y - REROUTE_SIZE.height / 2];
      const type = (edge.data as { type?: string } | undefined)?.type ?? '*';
      const colour = typeColour(type);
      const into = makeEdge(edge.source, handleOutput(edge.sourceHandle), id, REROUTE_INPUT, type, colour);
      const out = makeEdge(id, 0, edge.target, handleInput(edge.targetHandle), type, colour);
      setNodes((ns) => {
        const next = [...ns, rerouteNode(id, pos)];
        nodesRef.current = next;
        return next;
      });
      setEdges((es) => {
        const next = [...es.filter((e) => e.id !== edge.id), into, out];
        edgesRef.current = next;
        return next;
      });
    },
    [remember, rf],
  );

  const clipboard = useRef<Graph | null>(null);
  const pasteCount = useRef(0);
  const copySelection = useCallback((): Graph | null => {
    const sel = nodesRef.current.filter((n) => n.selected);
    if (!sel.length) return null;
    const ids = new Set(sel.map((n) => n.id));
    return { nodes: sel, edges: edgesRef.current.filter((e) => ids.has(e.source) && ids.has(e.target)) };
  }, []);
  const paste = useCallback(
    (g: Graph, offset: number) => {
      remember();
      const map = new Map<string, string>();
      const taken = new Set<string>();
      for (const n of g.nodes) {
        const id = nextId(nodesRef.current, taken);
        taken.add(id);
        map.set(n.id, id);
      }
      const newNodes: GNode[] = g.nodes.map((n) => ({
        id: map.get(n.id)!,
        type: n.type,
        position: { x: n.position.x + offset, y: n.position.y + offset },
        data: structuredClone(n.data),
        selected: true,
      }));
      const newEdges = g.edges.map((e) => {
        const type = e.data?.type ?? '*';
        return makeEdge(map.get(e.source)!, handleOutput(e.sourceHandle), map.get(e.target)!, handleInput(e.targetHandle), type, typeColour(type));
      });
      setGraph({
        nodes: [...nodesRef.current.map((n) => (n.selected ? { ...n, selected: false } : n)), ...newNodes],
        edges: [...edgesRef.current.map((e) => (e.selected ? { ...e, selected: false } : e)), ...newEdges],
      });
    },
    [remember, setGraph],
  );

  const fileInput = useRef<HTMLInputElement>(null);
  const canvasRef = useRef<HTMLElement>(null);
  const save = useCallback(() => {
    download('workflow.json', JSON.stringify(toApi({ nodes: nodesRef.current, edges: edgesRef.current }, catRef.current), null, 2));
  }, []);
  const saveCanvas = useCallback(async () => {
    try {
      const api = toApi({ nodes: nodesRef.current, edges: edgesRef.current }, catRef.current);
      const { workflow } = await convertWorkflow(api, 'ui');
      const canvas = withCanvasExtras(workflow, groupsRef.current, nodesRef.current);
      download('workflow.ui.json', JSON.stringify(canvas, null, 2));
    } catch (e) {
      setBanner({ kind: 'error', text: `Cannot save in ComfyUI's format: ${(e as Error).message}` });
    }
  }, []);

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const mod = e.ctrlKey || e.metaKey;
      if (mod && e.key === 'Enter') {
        e.preventDefault();
        void queue();
        return;
      }
      if (isEditable(e.target)) return;
      const k = e.key.toLowerCase();
      if (mod && k === 'z') {
        e.preventDefault();
        if (e.shiftKey) redo();
        else undo();
      } else if (mod && k === 'y') {
        e.preventDefault();
        redo();
      } else if (mod && k === 'c') {
        const g = copySelection();
        if (g) {
          clipboard.current = structuredClone({ nodes: g.nodes.map((n) => ({ ...n, measured: undefined })), edges: g.edges });
          pasteCount.current = 0;
        }
      } else if (mod && k === 'v') {
        if (clipboard.current) {
          e.preventDefault();
          pasteCount.current += 1;
          paste(clipboard.current, 40 * pasteCount.current);
        }
      } else if (mod && k === 'd') {
        e.preventDefault();
        const g = copySelection();
        if (g) paste(g, 40);
      } else if (mod && k === 's') {
        e.preventDefault();
        save();
      } else if (mod && k === 'o') {
        e.preventDefault();
        fileInput.current?.click();
      } else if (mod && k === 'a') {
        e.preventDefault();
        setNodes((ns) => ns.map((n) => ({ ...n, selected: true })));
      }
    };
    window.addEventListener('keydown', onKey);
    return () => window.removeEventListener('keydown', onKey);
  }, [queue, undo, redo, copySelection, paste, save]);

  useEffect(() => {
    window.nodegraph = {
      getWorkflow: () => toApi({ nodes: nodesRef.current, edges: edgesRef.current }, catRef.current),
      debug: () => ({
        edges: rf.getEdges().length,
        unmeasured: rf.getNodes().filter((n) => !n.measured?.width).map((n) => n.id),
        noHandles: rf.getNodes().filter((n) => !rf.getInternalNode(n.id)?.internals.handleBounds).map((n) => n.id),
      }),
    };
  }, [rf]);

  const openPaletteAt = useCallback(
    (sx: number, sy: number) => setPalette({ screen: { x: sx, y: sy }, flow: rf.screenToFlowPosition({ x: sx, y: sy }) }),
    [rf],
  );

  const onDrop = useCallback(
    (e: React.DragEvent) => {
      const file = e.dataTransfer.files?.[0];
      if (!file) return;
      e.preventDefault();
      // A picture dropped on a node with an image input goes to that input (uploaded).
      const target = (e.target as HTMLElement | null)?.closest?.('[data-testid=node]') as HTMLElement | null;
      const id = target?.dataset.id;
      const node = id ? nodesRef.current.find((n) => n.id === id) : undefined;
      const imageInput = node && catRef.current[node.data.classType]?.inputs.find((i) => i.literal && (i.options.image_upload || (node.data.classType === 'LoadImage' && i.name === 'image')));
      if (node && imageInput && file.type.startsWith('image/') && editorRef.current) {
        void editorRef.current.upload(node.id, imageInput.name, file);
        return;
      }
      if (!node && file.type.startsWith('image/')) {
        // A picture that carries no workflow becomes a LoadImage where it was dropped.
        const at = rf.screenToFlowPosition({ x: e.clientX, y: e.clientY });
        void (async () => {
          try {
            await workflowJsonFromPng(await file.arrayBuffer());
            void loadFile(file);
            return;
          } catch {
            /* a plain picture */
          }
          const def = catRef.current.LoadImage;
          if (!def || !editorRef.current) return setBanner({ kind: 'error', text: `${file.name} carries no workflow.` });
          await editorRef.current.upload(addNode(def, at), 'image', file);
        })();
        return;
      }
      void loadFile(file);
    },
    [loadFile, addNode, rf],
  );

  // A picture pasted from the clipboard goes to the selected node's image input, or becomes a
  // LoadImage in the middle of the view (copied nodes paste through the keyboard handler).
  useEffect(() => {
    const onPaste = (e: ClipboardEvent) => {
      if (isEditable(e.target)) return;
      const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith('image/'));
      const ed = editorRef.current;
      if (!file || !ed) return;
      e.preventDefault();
      const name = file.name && file.name !== 'image.png' ? file.name : `pasted-${Date.now()}.png`;
      const named = new File([file], name, { type: file.type });
      const selected = nodesRef.current.find((n) => n.selected);
      const input = selected && catRef.current[selected.data.classType]?.inputs.find(
        (i) => i.literal && (i.options.image_upload || (selected.data.classType === 'LoadImage' && i.name === 'image')),
      );
      if (selected && input) {
        void ed.upload(selected.id, input.name, named);
        return;
      }
      const def = catRef.current.LoadImage;
      if (!def) return setBanner({ kind: 'error', text: 'This server has no LoadImage node.' });
      const box = canvasRef.current?.getBoundingClientRect();
      const at = rf.screenToFlowPosition({ x: (box?.left ?? 0) + (box?.width ?? 0) / 2, y: (box?.top ?? 0) + (box?.height ?? 0) / 2 });
      void ed.upload(addNode(def, at), 'image', named);
    };
    window.addEventListener('paste', onPaste);
    return () => window.removeEventListener('paste', onPaste);
  }, [addNode, rf]);

  // Stable props: React Flow copies changed props into its store, and every store update
  // re-runs the selectors of every node, socket and link on the canvas.
  const flowHandlers = useMemo(
    () => ({
      onReconnectStart: () => {
        reconnected.current = false;
      },
      onDragStart: () => remember(),
      onBeforeDelete: async () => {
        remember();
        return true;
      },
      onEdgeDoubleClick: (e: React.MouseEvent, edge: GEdge) => addReroute(edge, e.clientX, e.clientY),
      onDoubleClick: (e: React.MouseEvent) => {
        if ((e.target as HTMLElement).classList.contains('react-flow__pane')) openPaletteAt(e.clientX, e.clientY);
      },
      onMoveStart: () => canvasRef.current?.classList.add('moving'),
      onMoveEnd: () => canvasRef.current?.classList.remove('moving'),
    }),
    [remember, openPaletteAt, addReroute],
  );

  if (loadError) {
    return (
      <div className="fatal" data-testid="fatal">
        <h1>nodegraph</h1>
        <p>Cannot read the node catalogue from the server: {loadError}</p>
        <button onClick={() => window.location.reload()}>Retry</button>
      </div>
    );
  }

  return (
    <div className="app" data-testid="app" data-running={running ? 'true' : 'false'} data-finished-runs={finishedRuns}>
      <header className="toolbar">
        <span className="brand">nodegraph</span>
        <button className="primary" data-testid="queue-button" onClick={() => void queue()} disabled={!catalogue} title="Queue (Ctrl+Enter)">
          Queue
        </button>
        <span className={`queue-count ${queueRemaining ? 'busy' : ''}`} data-testid="queue-count" title="Prompts waiting or running">
          {queueRemaining} in queue
        </span>
        <button onClick={() => void interrupt()} disabled={!running} data-testid="interrupt-button">
          Stop
        </button>
        <span className="sep" />
        <button data-testid="add-node" onClick={() => openPaletteAt(window.innerWidth / 2 - 160, 120)} disabled={!catalogue}>
          Add node
        </button>
        <button onClick={undo} disabled={!undoStack.current.length} data-testid="undo" title="Undo (Ctrl+Z)">
          Undo
        </button>
        <button onClick={redo} disabled={!redoStack.current.length} data-testid="redo" title="Redo (Ctrl+Shift+Z)">
          Redo
        </button>
        <button onClick={() => rf.fitView({ padding: 0.1, maxZoom: 1, duration: 200 })} data-testid="fit-view">
          Fit
        </button>
        <span className="sep" />
        <button onClick={() => fileInput.current?.click()} data-testid="load-button" title="Load JSON or PNG (Ctrl+O)">
          Load
        </button>
        <button onClick={() => setShowHistory((v) => !v)} data-testid="history-button" title="The queue and past results">
          History
        </button>
        <button onClick={save} data-testid="save-button" title="Save as JSON (Ctrl+S)">
          Save
        </button>
        <button onClick={() => void saveCanvas()} data-testid="save-ui-button" title="Save in ComfyUI's canvas format (ComfyUI opens it)">
          Save UI
        </button>
        <button onClick={() => { setGroups([]); loadApi(DEFAULT_WORKFLOW); }} data-testid="default-button" disabled={!catalogue} title="Replace the graph by the default one">
          Default
        </button>
        <button onClick={() => { setGroups([]); loadApi({}); }} data-testid="clear-button" title="Start from an empty canvas">
          Clear
        </button>
        <input
          ref={fileInput}
          type="file"
          accept=".json,.png,application/json,image/png"
          hidden
          data-testid="file-input"
          onChange={(e) => {
            const f = e.target.files?.[0];
            e.target.value = '';
            if (f) void loadFile(f);
          }}
        />
        <label className="live-toggle" title="Live: releasing a slider queues the graph again">
          <input
            type="checkbox"
            data-testid="live-toggle"
            checked={live}
            onChange={(e) => {
              setLive(e.target.checked);
              localStorage.setItem(LIVE_KEY, e.target.checked ? 'on' : 'off');
            }}
          />
          Live
        </label>
        <span className="grow" />
        <span className={`conn ${connected ? 'on' : 'off'}`} data-testid="connection" title={connected ? 'Live updates connected' : 'Reconnecting…'}>
          {connected ? '● live' : '○ offline'}
        </span>
      </header>
      {banner && (
        <div className={`banner ${banner.kind}`} data-testid="banner" data-kind={banner.kind}>
          <div className="banner-text">{banner.text}</div>
          {banner.details?.slice(0, 6).map((d, i) => (
            <div className="banner-detail" key={i}>
              {d}
            </div>
          ))}
          <button className="icon" onClick={() => setBanner(null)} aria-label="Dismiss">
            ×
          </button>
        </div>
      )}
      <main className="canvas" ref={canvasRef} onDragOver={(e) => e.preventDefault()} onDrop={onDrop}>
        {editor ? (
          <EditorContext.Provider value={editor}>
            <ReactFlow<GNode, GEdge>
              nodes={nodes}
              edges={edges}
              nodeTypes={nodeTypes}
              onNodesChange={onNodesChange}
              onEdgesChange={onEdgesChange}
              onConnect={onConnect}
              onConnectEnd={onConnectEnd}
              onReconnectStart={flowHandlers.onReconnectStart}
              onReconnect={onReconnect}
              onReconnectEnd={onReconnectEnd}
              isValidConnection={isValidConnection}
              onNodeDragStart={flowHandlers.onDragStart}
              onSelectionDragStart={flowHandlers.onDragStart}
              onBeforeDelete={flowHandlers.onBeforeDelete}
              onDoubleClick={flowHandlers.onDoubleClick}
              onEdgeDoubleClick={flowHandlers.onEdgeDoubleClick}
              zoomOnDoubleClick={false}
              onMoveStart={flowHandlers.onMoveStart}
              onMoveEnd={flowHandlers.onMoveEnd}
              deleteKeyCode={DELETE_KEYS}
              minZoom={0.05}
              maxZoom={3}
              defaultEdgeOptions={DEFAULT_EDGE_OPTIONS}
              proOptions={PRO_OPTIONS}
            >
              <Background variant={BackgroundVariant.Dots} gap={24} size={1} color="#3a3f4b" />
              <Controls showInteractive={false} />
              <MiniMap pannable zoomable nodeColor={minimapColour} maskColor="rgba(20,22,28,0.6)" />
              <ViewportPortal>
                {groups.map((g, i) => (
                  <div
                    key={i}
                    className="canvas-group"
                    data-testid="canvas-group"
                    style={{
                      transform: `translate(${g.bounding[0]}px, ${g.bounding[1]}px)`,
                      width: g.bounding[2],
                      height: g.bounding[3],
                      borderColor: g.color ?? '#3f789e',
                      background: `${g.color ?? '#3f789e'}33`,
                    }}
                  >
                    <span style={{ fontSize: g.font_size ?? 24 }}>{g.title}</span>
                  </div>
                ))}
              </ViewportPortal>
            </ReactFlow>
          </EditorContext.Provider>
        ) : (
          <div className="loading">Loading node catalogue…</div>
        )}
        {showHistory && (
          <HistoryPanel
            refresh={finishedRuns * 1000 + queueRemaining}
            onLoad={(wf) => {
              loadApi(unwrapWorkflow(wf));
              setBanner({ kind: 'info', text: 'Loaded the workflow of a past run' });
            }}
          />
        )}
      </main>
      {palette && catalogue && (
        <Palette
          catalogue={catalogue}
          at={palette.screen}
          filter={palette.link ? (def) => !!socketFor(def, palette.link!) : undefined}
          title={palette.link ? `Nodes that ${palette.link.side === 'source' ? 'take' : 'give'} ${palette.link.type}` : undefined}
          onClose={() => setPalette(null)}
          onPick={(def) => {
            addNode(def, palette.flow, palette.link);
            setPalette(null);
          }}
        />
      )}
      <footer className="hint">
        Double-click the canvas to add a node · drag from a socket to connect · double-click a link for a reroute · Ctrl+Z / Ctrl+Shift+Z undo/redo · Ctrl+C/V copy/paste · Ctrl+D duplicate ·
        Del delete · drop a JSON or PNG to load
      </footer>
    </div>
  );
}

// A small read-only hook for tests and power users: the current workflow as API JSON.
declare global {
  interface Window {
    nodegraph?: { getWorkflow: () => ApiWorkflow; debug: () => unknown };
  }
}
