// Live per-node run state from the websocket and from validation answers. Kept apart from the
// graph so that it never enters undo history or saved files.
import { useSyncExternalStore } from 'react';

export interface ImageRef {
  filename: string;
  subfolder: string;
  type: string;
}

export interface NodeIssue {
  message: string;
  input?: string;
}

export interface NodeRun {
  status?: 'queued' | 'executing' | 'cached' | 'done' | 'error';
  progress?: { value: number; max: number };
  images?: ImageRef[];
  imagesKey?: string;
  preview?: string;
  /** Text a node shows (ShowValue's `text` output). */
  texts?: string[];
  /** A sweep's results on an output node: each run's values and pictures, in queue order. */
  /** A sweep's results: one entry per run, its values one per swept input (`axes`). */
  strip?: { label: string; images: ImageRef[]; key: string; values: string[]; axes: string[] }[];
  errors?: NodeIssue[];
  /** What the node warned of in its last run (a LoRA key mismatch, an ignored input, ...). */
  warnings?: string[];
}

const EMPTY: NodeRun = {};
let state: Record<string, NodeRun> = {};
const listeners = new Set<() => void>();

function emit() {
  for (const l of listeners) l();
}

export const runStore = {
  get: (id: string): NodeRun => state[id] ?? EMPTY,
  all: () => state,
  subscribe(l: () => void) {
    listeners.add(l);
    return () => listeners.delete(l);
  },
  patch(id: string, p: Partial<NodeRun>) {
    state = { ...state, [id]: { ...(state[id] ?? EMPTY), ...p } };
    emit();
  },
  update(fn: (s: Record<string, NodeRun>) => Record<string, NodeRun>) {
    state = fn(state);
    emit();
  },
};

export function useNodeRun(id: string): NodeRun {
  return useSyncExternalStore(runStore.subscribe, () => runStore.get(id));
}
