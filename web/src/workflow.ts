// Conversion between the canvas graph and ComfyUI's API format. Layout lives in `_meta.pos`
// (the seed mode in `_meta.control`, the reroutes on an input's link in `_meta.reroutes`, see
// reroutes.ts), which the engine ignores.
import type { Edge, Node } from '@xyflow/react';
import { defaultValue, type Catalogue, type NodeDef } from './catalogue';
import { ReroutePlacer, isReroute, keepCanvasReroutes, linksIntoReroutes, readStops, upstream, type RerouteStop } from './reroutes';

export interface GraphNodeData extends Record<string, unknown> {
  classType: string;
  title?: string;
  values: Record<string, unknown>;
  /** Per seed input: what happens after queueing ("fixed" | "randomize" | "increment"). */
  control?: Record<string, string>;
  /** Values to sweep an input over when queued (see parseSweep), by input name. */
  sweep?: Record<string, string>;
  /** A canvas file's node colours (title bar, body), kept for "Save UI". */
  color?: string;
  bgcolor?: string;
}

/** A group of a ComfyUI canvas file: a titled, coloured box behind nodes (flow coordinates). */
export interface CanvasGroup {
  title: string;
  bounding: [number, number, number, number];
  color?: string;
  font_size?: number;
}
/** A node of the graph, or a reroute ('reroute': a pass-through dot, see reroutes.ts). */
export type GNode = Node<GraphNodeData, 'graph' | 'reroute'>;
export type GEdge = Edge<{ type: string }>;
export interface Graph {
  nodes: GNode[];
  edges: GEdge[];
}
export type ApiWorkflow = Record<string, { class_type: string; inputs: Record<string, unknown>; _meta?: any }>;

export const inHandle = (name: string) => `in:${name}`;
export const outHandle = (i: number) => `out:${i}`;
export const handleInput = (h: string | null | undefined) => (h ?? '').replace(/^in:/, '');
export const handleOutput = (h: string | null | undefined) => Number((h ?? 'out:0').replace(/^out:/, ''));

export function edgeId(source: string, sourceHandle: string, target: string, targetHandle: string) {
  return `${source}:${sourceHandle}->${target}:${targetHandle}`;
}

export function makeEdge(
  source: string,
  outIndex: number,
  target: string,
  input: string,
  type: string,
  colour: string,
): GEdge {
  const sh = outHandle(outIndex);
  const th = inHandle(input);
  return {
    id: edgeId(source, sh, target, th),
    source,
    sourceHandle: sh,
    target,
    targetHandle: th,
    data: { type },
    style: { stroke: colour, strokeWidth: 2 },
  };
}

/** Seeds get a "randomize" button and an after-queue mode. */
export function isSeedInput(input: { name: string; literal: string | null; options: Record<string, any> }) {
  return input.literal === 'INT' && (!!input.options.control_after_generate || /(^|_)seed$/.test(input.name));
}

export function newNodeData(def: NodeDef): GraphNodeData {
  const values: Record<string, unknown> = {};
  const control: Record<string, string> = {};
  for (const input of def.inputs) {
    if (!input.literal) continue;
    if (input.optional && input.options.default === undefined) continue;
    values[input.name] = defaultValue(input);
    if (isSeedInput(input)) control[input.name] = 'fixed';
  }
  return { classType: def.name, values, ...(Object.keys(control).length ? { control } : {}) };
}

export function nextId(nodes: { id: string }[], taken: Set<string> = new Set()): string {
  let max = 0;
  for (const n of nodes) {
    const v = Number(n.id);
    if (Number.isFinite(v) && v > max) max = v;
  }
  for (const t of taken) {
    const v = Number(t);
    if (Number.isFinite(v) && v > max) max = v;
  }
  return String(max + 1);
}

function isLink(v: unknown): v is [string, number] {
  return Array.isArray(v) && v.length === 2 && (typeof v[0] === 'string' || typeof v[0] === 'number') && Number.isInteger(v[1]);
}

/** The graph as an API-format workflow, positions in `_meta.pos`; a link through reroutes
 * comes from the output feeding them (the reroutes in `_meta.reroutes`). */
export function toApi(graph: Graph, catalogue: Catalogue): ApiWorkflow {
  const out: ApiWorkflow = {};
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const into = linksIntoReroutes(graph.nodes, graph.edges);
  const byTarget = new Map<string, { source: string; sourceHandle: string | null | undefined; stops: RerouteStop[] }>();
  for (const e of graph.edges) {
    const up = isReroute(byId.get(e.target)) ? null : upstream(e, byId, into);
    if (up) byTarget.set(`${e.target}|${handleInput(e.targetHandle)}`, up);
  }
  for (const node of graph.nodes) {
    if (isReroute(node)) continue;
    const reroutes: Record<string, RerouteStop[]> = {};
    const def = catalogue[node.data.classType];
    const inputs: Record<string, unknown> = {};
    const names = def ? def.inputs.map((i) => i.name) : [];
    for (const k of Object.keys(node.data.values)) if (!names.includes(k)) names.push(k);
    for (const e of graph.edges) {
      const n = handleInput(e.targetHandle);
      if (e.target === node.id && !names.includes(n)) names.push(n);
    }
    for (const name of names) {
      const edge = byTarget.get(`${node.id}|${name}`);
      if (edge) {
        inputs[name] = [edge.source, handleOutput(edge.sourceHandle)];
        if (edge.stops.length) reroutes[name] = edge.stops;
        continue;
      }
      const input = def?.inputs.find((i) => i.name === name);
      if (input && !input.literal) continue;
      const v = node.data.values[name];
      if (v === undefined) continue;
      inputs[name] = Array.isArray(v) ? { __value__: v } : v;
    }
    const meta: Record<string, unknown> = {
      title: node.data.title || def?.displayName || node.data.classType,
      pos: [Math.round(node.position.x), Math.round(node.position.y)],
    };
    if (node.data.control && Object.keys(node.data.control).length) meta.control = node.data.control;
    if (Object.keys(reroutes).length) meta.reroutes = reroutes;
    for (const key of ['color', 'bgcolor'] as const) if (node.data[key]) meta[key] = node.data[key];
    out[node.id] = { class_type: node.data.classType, inputs, _meta: meta };
  }
  return out;
}

/** Finds the API-format workflow inside whatever JSON was loaded. */
export function unwrapWorkflow(json: any): ApiWorkflow {
  if (json && typeof json === 'object' && !Array.isArray(json)) {
    if (Array.isArray(json.nodes) && Array.isArray(json.links)) {
      throw new Error('This is a ComfyUI canvas (UI-format) file; export it in API format to load it here.');
    }
    if (json.prompt && typeof json.prompt === 'object' && !('class_type' in json.prompt)) {
      return unwrapWorkflow(json.prompt);
    }
    const entries = Object.entries(json);
    if (entries.every(([, v]: [string, any]) => v && typeof v.class_type === 'string')) {
      return json as ApiWorkflow;
    }
  }
  throw new Error('Not a workflow in API format ({"id": {"class_type", "inputs"}}).');
}

function readPos(meta: any): { x: number; y: number } | null {
  const p = meta?.pos;
  if (Array.isArray(p) && p.length >= 2 && p.every((v: unknown) => typeof v === 'number')) return { x: p[0], y: p[1] };
  if (p && typeof p.x === 'number' && typeof p.y === 'number') return { x: p.x, y: p.y };
  return null;
}

/** Rough rendered height of a node, for laying out files that carry no positions. */
function estimateHeight(def: NodeDef | undefined): number {
  if (!def) return 120;
  const sockets = def.inputs.filter((i) => !i.literal).length;
  const rows = Math.max(sockets, def.outputs.length);
  const widgets = def.inputs.filter((i) => i.literal);
  const tall = widgets.filter((w) => w.options.multiline).length;
  return 44 + rows * 22 + widgets.length * 28 + tall * 56 + (def.outputNode ? 280 : 0);
}

/** Column by longest path from the sources, stacked by height: a readable layout for files
 * without one. */
function autoLayout(api: ApiWorkflow, catalogue: Catalogue): Record<string, { x: number; y: number }> {
  const depth: Record<string, number> = {};
  const visiting = new Set<string>();
  const d = (id: string): number => {
    if (depth[id] !== undefined) return depth[id];
    if (visiting.has(id)) return 0;
    visiting.add(id);
    let best = 0;
    for (const v of Object.values(api[id]?.inputs ?? {})) {
      if (isLink(v) && api[String(v[0])]) best = Math.max(best, d(String(v[0])) + 1);
    }
    visiting.delete(id);
    depth[id] = best;
    return best;
  };
  const columns: string[][] = [];
  for (const id of Object.keys(api)) (columns[d(id)] ??= []).push(id);
  const heights = columns.map((col) => col.map((id) => estimateHeight(catalogue[api[id].class_type])));
  const tallest = Math.max(0, ...heights.map((h) => h.reduce((a, b) => a + b + 40, -40)));
  const pos: Record<string, { x: number; y: number }> = {};
  columns.forEach((col, c) => {
    const total = heights[c].reduce((a, b) => a + b + 40, -40);
    let y = (tallest - total) / 2;
    col.forEach((id, r) => {
      pos[id] = { x: c * 340, y: Math.round(y) };
      y += heights[c][r] + 40;
    });
  });
  return pos;
}

export function fromApi(api: ApiWorkflow, catalogue: Catalogue, colour: (t: string) => string): Graph {
  const layout = Object.values(api).some((n) => !readPos(n._meta)) ? autoLayout(api, catalogue) : null;
  const nodes: GNode[] = [];
  const edges: GEdge[] = [];
  const reroutes = new ReroutePlacer(new Set(Object.keys(api)));
  for (const [id, n] of Object.entries(api)) {
    const def = catalogue[n.class_type];
    const values: Record<string, unknown> = {};
    for (const [name, v] of Object.entries(n.inputs ?? {})) {
      const input = def?.inputs.find((i) => i.name === name);
      if (isLink(v) && !api[String(v[0])]) {
        // A link to a node the file lacks: leave the input unconnected (validation will say so).
        if (input?.literal) values[name] = defaultValue(input);
      } else if (isLink(v)) {
        const src = api[String(v[0])];
        const srcDef = catalogue[src.class_type];
        const type = srcDef?.outputs[v[1]]?.type ?? input?.type ?? '*';
        for (const hop of reroutes.route(String(v[0]), v[1], id, name, readStops(n._meta, name))) {
          edges.push(makeEdge(hop.source, hop.slot, hop.target, hop.input, type, colour(type)));
        }
        if (input?.literal) values[name] = defaultValue(input);
      } else if (v && typeof v === 'object' && '__value__' in (v as any)) {
        values[name] = (v as any).__value__;
      } else {
        values[name] = v;
      }
    }
    if (def) {
      for (const input of def.inputs) {
        if (input.literal && values[input.name] === undefined && !(input.optional && input.options.default === undefined)) {
          values[input.name] = defaultValue(input);
        }
      }
    }
    const control = n._meta?.control && typeof n._meta.control === 'object' ? { ...n._meta.control } : undefined;
    const title = typeof n._meta?.title === 'string' && n._meta.title !== (def?.displayName ?? n.class_type) ? n._meta.title : undefined;
    const colours: Partial<GraphNodeData> = {};
    for (const key of ['color', 'bgcolor'] as const) if (typeof n._meta?.[key] === 'string') colours[key] = n._meta[key];
    nodes.push({
      id,
      type: 'graph',
      position: readPos(n._meta) ?? layout?.[id] ?? { x: 0, y: 0 },
      data: { classType: n.class_type, values, ...(title ? { title } : {}), ...(control ? { control } : {}), ...colours },
    });
  }
  return { nodes: [...nodes, ...reroutes.nodes], edges };
}

/** Text chunks of a PNG (tEXt, iTXt and zTXt). */
export async function pngTextChunks(buf: ArrayBuffer): Promise<Record<string, string>> {
  const bytes = new Uint8Array(buf);
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || sig.some((b, i) => bytes[i] !== b)) throw new Error('Not a PNG file.');
  const view = new DataView(buf);
  const latin1 = new TextDecoder('latin1');
  const utf8 = new TextDecoder('utf-8');
  const inflate = async (data: Uint8Array) => {
    const ds = new DecompressionStream('deflate');
    const stream = new Blob([data as BlobPart]).stream().pipeThrough(ds);
    return new Uint8Array(await new Response(stream).arrayBuffer());
  };
  const out: Record<string, string> = {};
  let off = 8;
  while (off + 8 <= bytes.length) {
    const len = view.getUint32(off);
    const type = latin1.decode(bytes.subarray(off + 4, off + 8));
    const data = bytes.subarray(off + 8, off + 8 + len);
    off += 12 + len;
    if (type === 'IEND') break;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const key = latin1.decode(data.subarray(0, nul));
    if (type === 'tEXt') out[key] = latin1.decode(data.subarray(nul + 1));
    else if (type === 'zTXt') out[key] = latin1.decode(await inflate(data.subarray(nul + 2)));
    else if (type === 'iTXt') {
      const compressed = data[nul + 1] === 1;
      let p = nul + 3;
      p = data.indexOf(0, p) + 1; // language tag
      p = data.indexOf(0, p) + 1; // translated keyword
      const text = data.subarray(p);
      out[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return out;
}

/** The workflow JSON a PNG embeds: its `workflow` chunk (ComfyUI's canvas file, or the
 * canvas's own layout-carrying API workflow), else `prompt`. */
export async function workflowJsonFromPng(buf: ArrayBuffer): Promise<unknown> {
  const chunks = await pngTextChunks(buf);
  for (const key of ['workflow', 'prompt']) {
    if (!chunks[key]) continue;
    try {
      return JSON.parse(chunks[key]);
    } catch {
      /* try the next chunk */
    }
  }
  throw new Error('This PNG carries no workflow.');
}

/** Whether JSON is a ComfyUI canvas (UI-format) file. */
export function isCanvasFile(json: any): boolean {
  return !!json && typeof json === 'object' && Array.isArray(json.nodes) && Array.isArray(json.links);
}

export type Convert = (workflow: unknown, to: 'api' | 'ui') => Promise<{ workflow: any; warnings: string[] }>;

/** The API workflow of loaded JSON: a ComfyUI canvas file converted by the server (its nodes'
 * positions, colours and reroutes kept), else the API workflow inside it. */
export async function resolveWorkflow(
  json: any,
  convert: Convert,
): Promise<{ api: ApiWorkflow; warnings: string[]; groups: CanvasGroup[] }> {
  if (!isCanvasFile(json)) return { api: unwrapWorkflow(json), warnings: [], groups: [] };
  const { workflow, warnings } = await convert(json, 'api');
  const api = unwrapWorkflow(workflow);
  for (const n of json.nodes as any[]) {
    const entry = api[String(n?.id)];
    const pos = n?.pos;
    const x = Array.isArray(pos) ? pos[0] : pos?.['0'];
    const y = Array.isArray(pos) ? pos[1] : pos?.['1'];
    if (entry && typeof x === 'number' && typeof y === 'number') entry._meta = { ...(entry._meta ?? {}), pos: [x, y] };
    for (const key of ['color', 'bgcolor']) if (entry && typeof n?.[key] === 'string') entry._meta = { ...(entry._meta ?? {}), [key]: n[key] };
  }
  keepCanvasReroutes(json, api);
  return { api, warnings, groups: canvasGroups(json) };
}

/** The groups of a canvas file that have a usable box. */
export function canvasGroups(json: any): CanvasGroup[] {
  const groups = Array.isArray(json?.groups) ? json.groups : [];
  return groups
    .filter((g: any) => Array.isArray(g?.bounding) && g.bounding.length === 4 && g.bounding.every(Number.isFinite))
    .map((g: any) => ({
      title: String(g.title ?? ''),
      bounding: g.bounding.map(Number) as CanvasGroup['bounding'],
      ...(typeof g.color === 'string' ? { color: g.color } : {}),
      ...(typeof g.font_size === 'number' ? { font_size: g.font_size } : {}),
    }));
}

/** A canvas file from the server's conversion, with the groups and node colours put back. */
export function withCanvasExtras(ui: any, groups: CanvasGroup[], nodes: GNode[]): any {
  const byId = new Map(nodes.map((n) => [n.id, n.data]));
  const out = { ...ui, groups: groups.map((g, i) => ({ id: i + 1, ...g, flags: {} })) };
  out.nodes = (ui.nodes ?? []).map((n: any) => {
    const data = byId.get(String(n.id));
    return { ...n, ...(data?.color ? { color: data.color } : {}), ...(data?.bgcolor ? { bgcolor: data.bgcolor } : {}) };
  });
  return out;
}

export type SweepAxis = { node: string; input: string; values?: number[]; from?: number; to?: number; count?: number };

/** A sweep's values as typed: "0.3, 0.5, 0.7", or "0.2..0.8 x4" (from, to, count); null if
 * neither. */
export function parseSweep(text: string): Omit<SweepAxis, 'node' | 'input'> | null {
  const range = /^\s*(-?[\d.]+)\s*\.\.\s*(-?[\d.]+)\s*x\s*(\d+)\s*$/i.exec(text);
  if (range) {
    const [from, to, count] = [Number(range[1]), Number(range[2]), parseInt(range[3], 10)];
    return Number.isFinite(from) && Number.isFinite(to) && count >= 1 ? { from, to, count } : null;
  }
  const values = text.split(/[,\s]+/).filter(Boolean).map(Number);
  return values.length && values.every(Number.isFinite) ? { values } : null;
}

/** The sweep axes the graph's nodes ask for, in node order. */
export function sweepAxes(nodes: GNode[]): SweepAxis[] {
  const axes: SweepAxis[] = [];
  for (const n of nodes) {
    for (const [input, text] of Object.entries(n.data.sweep ?? {})) {
      const parsed = parseSweep(text);
      if (parsed) axes.push({ node: n.id, input, ...parsed });
    }
  }
  return axes;
}
