// ComfyUI's Reroute nodes on the canvas: one-input, one-output pass-through dots that bend a
// link. They are canvas nodes of type 'reroute' linked like any other; the API workflow has none
// (a link through them runs from the output feeding the first one, as ComfyUI queues it) and
// keeps them in the consumer's `_meta.reroutes`: {input: [{id, pos}, ...]}, source first. The
// server's API -> UI conversion writes them back as "Reroute" nodes (nodegraph/ui_format).
import type { GEdge, GNode } from './workflow';

export const REROUTE = 'Reroute';
/** The name of a reroute's one input (its output is output 0). */
export const REROUTE_INPUT = 'input';
/** ComfyUI's size of a Reroute node. */
export const REROUTE_SIZE = { width: 75, height: 26 };

export interface RerouteStop {
  id: string;
  pos: [number, number];
}

type Link = Pick<GEdge, 'source' | 'sourceHandle' | 'target' | 'targetHandle'>;

export const isReroute = (n: { type?: string } | undefined) => n?.type === 'reroute';

export function rerouteNode(id: string, pos: [number, number]): GNode {
  return { id, type: 'reroute', position: { x: pos[0], y: pos[1] }, data: { classType: REROUTE, values: {} } };
}

/** Per reroute, the link into it. */
export function linksIntoReroutes(nodes: GNode[], edges: Link[]): Map<string, Link> {
  const reroutes = new Set(nodes.filter(isReroute).map((n) => n.id));
  const into = new Map<string, Link>();
  for (const e of edges) if (reroutes.has(e.target)) into.set(e.target, e);
  return into;
}

/** Where a link really comes from: its source, or, when that is a reroute, the output feeding
 * the first reroute on the way, with the reroutes passed (source first). null when a reroute
 * on the way is fed by nothing (or the reroutes loop). */
export function upstream(
  link: Link,
  byId: Map<string, GNode>,
  into: Map<string, Link>,
): { source: string; sourceHandle: string | null | undefined; stops: RerouteStop[] } | null {
  const stops: RerouteStop[] = [];
  let at: Link | undefined = link;
  while (at && isReroute(byId.get(at.source))) {
    const r = byId.get(at.source)!;
    if (stops.some((s) => s.id === r.id)) return null;
    stops.unshift({ id: r.id, pos: [Math.round(r.position.x), Math.round(r.position.y)] });
    at = into.get(r.id);
  }
  return at ? { source: at.source, sourceHandle: at.sourceHandle, stops } : null;
}

/** The inputs of real nodes a reroute feeds, through any reroutes after it. */
export function downstream(id: string, byId: Map<string, GNode>, edges: Link[]): Link[] {
  const out: Link[] = [];
  const seen = new Set([id]);
  const stack = [id];
  while (stack.length) {
    const at = stack.pop()!;
    for (const e of edges) {
      if (e.source !== at) continue;
      if (!isReroute(byId.get(e.target))) out.push(e);
      else if (!seen.has(e.target)) stack.push((seen.add(e.target), e.target));
    }
  }
  return out;
}

/** The reroutes `_meta.reroutes` lists for an input; [] when none or unreadable. */
export function readStops(meta: any, input: string): RerouteStop[] {
  const path = meta?.reroutes?.[input];
  if (!Array.isArray(path)) return [];
  const stops: RerouteStop[] = [];
  for (const s of path) {
    const id = typeof s?.id === 'number' ? String(s.id) : s?.id;
    const pos = s?.pos;
    if (typeof id !== 'string' || !id || !Array.isArray(pos) || pos.length !== 2 || !pos.every(Number.isFinite)) return [];
    if (stops.some((t) => t.id === id)) return [];
    stops.push({ id, pos: [pos[0], pos[1]] });
  }
  return stops;
}

export interface Hop {
  source: string;
  slot: number;
  target: string;
  input: string;
}

/** Builds a graph's reroutes from the links that list them (fromApi). */
export class ReroutePlacer {
  readonly nodes: GNode[] = [];
  private readonly feeds = new Map<string, string>();

  /** `taken`: the ids of the graph's other nodes. */
  constructor(private readonly taken: Set<string>) {}

  /** The links to draw for an input fed by output `slot` of `source` through `stops`: through
   * the reroutes (made, or shared with another input: then only the hops after them), or
   * straight when the stops do not fit (the id of another node, a reroute fed by another
   * output). */
  route(source: string, slot: number, target: string, input: string, stops: RerouteStop[]): Hop[] {
    const feed = (i: number) => (i === 0 ? `${source}|${slot}` : `${stops[i - 1].id}|0`);
    const fits = stops.every((s, i) => !this.taken.has(s.id) && (this.feeds.get(s.id) ?? feed(i)) === feed(i));
    if (!fits || !stops.length) return [{ source, slot, target, input }];
    const hops: Hop[] = [];
    stops.forEach((s, i) => {
      if (this.feeds.has(s.id)) return;
      this.feeds.set(s.id, feed(i));
      this.nodes.push(rerouteNode(s.id, s.pos));
      hops.push(i === 0 ? { source, slot, target: s.id, input: REROUTE_INPUT } : { source: stops[i - 1].id, slot: 0, target: s.id, input: REROUTE_INPUT });
    });
    hops.push({ source: stops[stops.length - 1].id, slot: 0, target, input });
    return hops;
  }
}

/** A canvas file's native reroute points (schema 1's `reroutes` and links' `parentId`; 0.4's
 * `extra.reroutes` and `extra.linkExtensions`): per link id, its points from source to target,
 * as stops with ids of their own (`native-<id>`, apart from the nodes'). */
export function nativeReroutes(ui: any): Map<string, RerouteStop[]> {
  const list = Array.isArray(ui?.reroutes) ? ui.reroutes : Array.isArray(ui?.extra?.reroutes) ? ui.extra.reroutes : [];
  const points = new Map<string, any>(list.filter((r: any) => r && !r.floating).map((r: any) => [String(r.id), r]));
  const last = new Map<string, string>(); // link id -> the point nearest its target
  for (const l of Array.isArray(ui?.links) ? ui.links : []) {
    if (l && !Array.isArray(l) && typeof l === 'object' && l.parentId != null) last.set(String(l.id), String(l.parentId));
  }
  for (const e of Array.isArray(ui?.extra?.linkExtensions) ? ui.extra.linkExtensions : []) {
    if (e?.parentId != null) last.set(String(e.id), String(e.parentId));
  }
  const out = new Map<string, RerouteStop[]>();
  for (const [link, first] of last) {
    const stops: RerouteStop[] = [];
    for (let id: string | undefined = first; id !== undefined; ) {
      const r = points.get(id);
      const pos = r?.pos;
      if (!r || !Array.isArray(pos) || !pos.every(Number.isFinite) || stops.some((s) => s.id === `native-${id}`)) {
        stops.length = 0; // a point missing or looping: the link is drawn straight
        break;
      }
      stops.unshift({ id: `native-${id}`, pos: [pos[0], pos[1]] });
      id = r.parentId == null ? undefined : String(r.parentId);
    }
    if (stops.length) out.set(link, stops);
  }
  return out;
}

/** Copies a ComfyUI canvas file's reroutes into the API workflow converted from it: onto each
 * node that the file links through reroutes (Reroute nodes, or native reroute points on the
 * links), the reroutes of each such input, source first. */
export function keepCanvasReroutes(ui: any, api: Record<string, { inputs: Record<string, unknown>; _meta?: any }>): void {
  const nodes = new Map<string, any>((Array.isArray(ui?.nodes) ? ui.nodes : []).map((n: any) => [String(n?.id), n]));
  const links = new Map<string, string>(); // link id -> origin node id
  for (const l of Array.isArray(ui?.links) ? ui.links : []) {
    if (Array.isArray(l)) links.set(String(l[0]), String(l[1]));
    else if (l && typeof l === 'object') links.set(String(l.id), String(l.origin_id));
  }
  const native = nativeReroutes(ui);
  const origin = (link: unknown) => (link === null || link === undefined ? undefined : nodes.get(links.get(String(link)) ?? ''));
  const pointsOn = (link: unknown) => (link === null || link === undefined ? [] : native.get(String(link)) ?? []);
  for (const [id, n] of nodes) {
    const entry = api[id];
    if (!entry || n?.type === REROUTE) continue;
    const kept: Record<string, RerouteStop[]> = {};
    for (const input of Array.isArray(n.inputs) ? n.inputs : []) {
      const stops: RerouteStop[] = [...pointsOn(input?.link)];
      for (let r = origin(input?.link); r?.type === REROUTE && !stops.some((s) => s.id === String(r.id)); r = origin(r.inputs?.[0]?.link)) {
        const x = Array.isArray(r.pos) ? r.pos[0] : r.pos?.['0'];
        const y = Array.isArray(r.pos) ? r.pos[1] : r.pos?.['1'];
        if (!Number.isFinite(x) || !Number.isFinite(y)) {
          stops.length = 0; // a reroute without a position: the link is drawn straight
          break;
        }
        stops.unshift(...pointsOn(r.inputs?.[0]?.link), { id: String(r.id), pos: [x, y] });
      }
      const value = entry.inputs?.[input?.name];
      if (stops.length && Array.isArray(value) && value.length === 2) kept[input.name] = stops;
    }
    if (Object.keys(kept).length) entry._meta = { ...(entry._meta ?? {}), reroutes: kept };
  }
}

/** The type flowing through a reroute: that of the output feeding it ('*' when none feeds it).
 * `outputType` gives a real node's output type by its handle. */
export function rerouteType(
  id: string,
  byId: Map<string, GNode>,
  edges: Link[],
  outputType: (node: GNode, handle: string | null | undefined) => string | undefined,
): string {
  const into = linksIntoReroutes([...byId.values()], edges);
  const link = into.get(id);
  const up = link && upstream(link, byId, into);
  const source = up && byId.get(up.source);
  return (source && outputType(source, up.sourceHandle)) ?? '*';
}
