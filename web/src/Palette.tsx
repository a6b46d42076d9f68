import { useEffect, useMemo, useRef, useState } from 'react';
import type { Catalogue, NodeDef } from './catalogue';

interface Props {
  catalogue: Catalogue;
  at: { x: number; y: number };
  onPick: (def: NodeDef) => void;
  onClose: () => void;
  /** Only these nodes (e.g. those that can take a dragged link). */
  filter?: (def: NodeDef) => boolean;
  title?: string;
}

function score(def: NodeDef, q: string): number {
  if (!q) return 1;
  const name = def.displayName.toLowerCase();
  const cls = def.name.toLowerCase();
  if (name === q || cls === q) return 100;
  if (name.startsWith(q) || cls.startsWith(q)) return 50;
  if (name.includes(q) || cls.includes(q)) return 20;
  const types = [...def.inputs.map((i) => i.type), ...def.outputs.map((o) => o.type)].join(' ').toLowerCase();
  const hay = `${name} ${cls} ${def.category.toLowerCase()} ${def.description.toLowerCase()} ${types}`;
  return q.split(/\s+/).every((w) => hay.includes(w)) ? 5 : 0;
}

/** Searchable node list; opens at the pointer (double-click) or from the toolbar. */
export function Palette({ catalogue, at, onPick, onClose, filter, title }: Props) {
  const [query, setQuery] = useState('');
  const [active, setActive] = useState(0);
  const inputRef = useRef<HTMLInputElement>(null);
  const listRef = useRef<HTMLDivElement>(null);
  const results = useMemo(() => {
    const q = query.trim().toLowerCase();
    return Object.values(catalogue)
      .filter((d) => !filter || filter(d))
      .map((d) => [score(d, q), d] as const)
      .filter(([s]) => s > 0)
      .sort((a, b) => b[0] - a[0] || a[1].category.localeCompare(b[1].category) || a[1].displayName.localeCompare(b[1].displayName))
      .map(([, d]) => d);
  }, [catalogue, query, filter]);
  useEffect(() => inputRef.current?.focus(), []);
  useEffect(() => setActive(0), [query]);
  useEffect(() => {
    listRef.current?.querySelector('.active')?.scrollIntoView({ block: 'nearest' });
  }, [active]);
  const left = Math.min(at.x, window.innerWidth - 340);
  const top = Math.min(at.y, window.innerHeight - 420);
  return (
    <div className="palette-backdrop" onMouseDown={onClose}>
      <div className="palette" data-testid="palette" style={{ left, top }} onMouseDown={(e) => e.stopPropagation()}>
        {title && <div className="palette-title">{title}</div>}
        <input
          ref={inputRef}
          data-testid="palette-search"
          placeholder="Search nodes…"
          value={query}
          onChange={(e) => setQuery(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === 'ArrowDown') {
              e.preventDefault();
              setActive((a) => Math.min(a + 1, results.length - 1));
            } else if (e.key === 'ArrowUp') {
              e.preventDefault();
              setActive((a) => Math.max(a - 1, 0));
            } else if (e.key === 'Enter' && results[active]) {
              onPick(results[active]);
            } else if (e.key === 'Escape') {
              onClose();
            }
          }}
        />
        <div className="palette-list" ref={listRef}>
          {results.map((d, i) => (
            <div
              key={d.name}
              className={`palette-item ${i === active ? 'active' : ''}`}
              data-testid="palette-item"
              data-class={d.name}
              onMouseEnter={() => setActive(i)}
              onClick={() => onPick(d)}
              title={d.description}
            >
              <span className="pi-name">{d.displayName}</span>
              <span className="pi-cat">{d.category}</span>
            </div>
          ))}
          {results.length === 0 && <div className="palette-empty">No node matches “{query}”.</div>}
        </div>
      </div>
    </div>
  );
}
