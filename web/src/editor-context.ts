import { createContext, useContext } from 'react';
import type { Catalogue } from './catalogue';

export interface EditorApi {
  catalogue: Catalogue;
  setValue: (id: string, input: string, value: unknown) => void;
  setControl: (id: string, input: string, mode: string) => void;
  /** Sweep an input over values when queued (null: no sweep). */
  setSweep: (id: string, input: string, text: string | null) => void;
  /** Rename a node (an empty title restores the catalogue's name). */
  setTitle: (id: string, title: string) => void;
  /** Queue the graph now (a slider released). */
  requeue: () => void;
  upload: (id: string, input: string, file: File) => Promise<void>;
  extraChoices: (cls: string, input: string) => string[];
  /** The picture an output node's result can be compared with (its img2img input), if any. */
  compareFor: (id: string) => string | null;
}

export const EditorContext = createContext<EditorApi | null>(null);

export function useEditor(): EditorApi {
  const ctx = useContext(EditorContext);
  if (!ctx) throw new Error('EditorContext missing');
  return ctx;
}
