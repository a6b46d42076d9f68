// The node catalogue from GET /object_info, normalised for the canvas.

export type LiteralKind = 'INT' | 'FLOAT' | 'STRING' | 'BOOLEAN' | 'COMBO';

export interface InputDef {
  name: string;
  /** Socket or literal type name; COMBO for a choice list. */
  type: string;
  /** A literal input gets a widget; it may still be fed by a link. */
  literal: LiteralKind | null;
  optional: boolean;
  choices: unknown[];
  options: Record<string, any>;
}

export interface OutputDef {
  name: string;
  type: string;
}

export interface NodeDef {
  name: string;
  displayName: string;
  category: string;
  description: string;
  outputNode: boolean;
  inputs: InputDef[];
  outputs: OutputDef[];
}

export type Catalogue = Record<string, NodeDef>;

const LITERALS = new Set(['INT', 'FLOAT', 'STRING', 'BOOLEAN']);

function parseInput(name: string, entry: any, optional: boolean): InputDef {
  const [head, opts] = Array.isArray(entry) ? entry : [entry, {}];
  const options: Record<string, any> = opts && typeof opts === 'object' ? { ...opts } : {};
  if (Array.isArray(head)) {
    return { name, type: 'COMBO', literal: 'COMBO', optional, choices: head, options };
  }
  const type = String(head);
  if (type === 'COMBO') {
    return { name, type, literal: 'COMBO', optional, choices: options.options ?? [], options };
  }
  const literal = LITERALS.has(type) ? (type as LiteralKind) : null;
  return { name, type, literal, optional, choices: [], options };
}

export function parseCatalogue(info: Record<string, any>): Catalogue {
  const out: Catalogue = {};
  for (const [cls, raw] of Object.entries(info ?? {})) {
    const req = raw?.input?.required ?? {};
    const opt = raw?.input?.optional ?? {};
    const orderReq: string[] = raw?.input_order?.required ?? Object.keys(req);
    const orderOpt: string[] = raw?.input_order?.optional ?? Object.keys(opt);
    const inputs: InputDef[] = [
      ...orderReq.filter((n) => n in req).map((n) => parseInput(n, req[n], false)),
      ...orderOpt.filter((n) => n in opt).map((n) => parseInput(n, opt[n], true)),
    ];
    const types: string[] = raw?.output ?? [];
    const names: string[] = raw?.output_name ?? [];
    out[cls] = {
      name: cls,
      displayName: raw?.display_name || cls,
      category: raw?.category || 'other',
      description: raw?.description || '',
      outputNode: !!raw?.output_node,
      inputs,
      outputs: types.map((t, i) => ({ type: String(t), name: names[i] ?? String(t) })),
    };
  }
  return out;
}

/** Whether an output of type `source` may feed an input of type `target` (the engine's rule). */
export function compatible(source: string, target: string): boolean {
  if (source === target || source === '*' || target === '*') return true;
  if (target === 'FLOAT' && source === 'INT') return true;
  if (target === 'COMBO' && source === 'STRING') return true;
  return false;
}

const COLOURS: Record<string, string> = {
  MODEL: '#b39ddb',
  CLIP: '#ffd54f',
  VAE: '#ef5350',
  CONDITIONING: '#ffa94d',
  LATENT: '#f06292',
  NOISY_LATENT: '#ce93d8',
  IMAGE: '#64b5f6',
  MASK: '#81c784',
  INT: '#4dd0e1',
  FLOAT: '#a5d6a7',
  STRING: '#e0e0e0',
  BOOLEAN: '#90a4ae',
  COMBO: '#bcaaa4',
  '*': '#9e9e9e',
};

/** A stable colour per socket type; unknown types get a hue from their name. */
export function typeColour(type: string): string {
  if (COLOURS[type]) return COLOURS[type];
  let h = 0;
  for (const ch of type) h = (h * 31 + ch.charCodeAt(0)) % 360;
  return `hsl(${h}, 60%, 65%)`;
}

export function defaultValue(input: InputDef): unknown {
  const d = input.options.default;
  if (d !== undefined) return d;
  switch (input.literal) {
    case 'INT':
    case 'FLOAT':
      return typeof input.options.min === 'number' ? input.options.min : 0;
    case 'STRING':
      return '';
    case 'BOOLEAN':
      return false;
    case 'COMBO':
      return input.choices[0] ?? '';
    default:
      return undefined;
  }
}
