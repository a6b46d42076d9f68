import { memo, useMemo, useRef, useState } from 'react';
import { Handle, Position, useNodeConnections, useStore, type NodeProps } from '@xyflow/react';
import { typeColour, type InputDef } from './catalogue';
import { useEditor } from './editor-context';
import { useNodeRun, type NodeRun } from './runstate';
import { createPortal } from 'react-dom';
import { viewUrl } from './api';
import { MaskPainter } from './MaskPainter';
import { handleInput, inHandle, isSeedInput, outHandle, parseSweep, type GNode } from './workflow';

const LOD_ZOOM = 0.4;

/** Pressing a linked input picks its link up by that end, ComfyUI's way: the press is handed to
 * the link's own end grip (React Flow's reconnect anchor, under the socket), so the link stays
 * on its output and follows the pointer; dropped on another input it moves there, on empty
 * canvas it is removed. */
function pickUpLink(edgeId: string, e: React.MouseEvent) {
  if (e.button !== 0) return;
  const grip = document.querySelector(
    `.react-flow__edge[data-id="${CSS.escape(edgeId)}"] .react-flow__edgeupdater-target`,
  );
  if (!grip) return;
  e.preventDefault();
  e.stopPropagation();
  grip.dispatchEvent(
    new MouseEvent('mousedown', { bubbles: true, cancelable: true, button: 0, clientX: e.clientX, clientY: e.clientY, view: window }),
  );
}

/** Props of an input's socket: a linked one picks its link up instead of starting a new one
 * (in the capture phase, so the socket never sees the press). */
export function inputSocket(edgeId: string | undefined) {
  return edgeId === undefined ? {} : { onMouseDownCapture: (e: React.MouseEvent) => pickUpLink(edgeId, e) };
}

function NumberWidget({ id, node, input, value }: { id: string; node: GNode['data']; input: InputDef; value: unknown }) {
  const ed = useEditor();
  const { min, max } = input.options;
  const isInt = input.literal === 'INT';
  const step = input.options.step ?? (isInt ? 1 : 0.01);
  const num = typeof value === 'number' ? value : Number(value);
  const [text, setText] = useState<string | null>(null);
  const slider = !isInt && typeof min === 'number' && typeof max === 'number' && max - min <= 100;
  const seed = isInt && isSeedInput(input);
  const outOfRange = (typeof min === 'number' && num < min) || (typeof max === 'number' && num > max);
  const commitText = (t: string) => {
    const v = isInt ? parseInt(t, 10) : parseFloat(t);
    if (Number.isFinite(v)) ed.setValue(id, input.name, v);
  };
  const released = useRef(false);
  return (
    <div className="widget-number">
      {slider && (
        <input
          type="range"
          className="nodrag slider"
          data-testid={`slider-${input.name}`}
          min={min}
          max={max}
          step={step}
          value={Number.isFinite(num) ? num : 0}
          onChange={(e) => {
            released.current = false;
            ed.setValue(id, input.name, parseFloat(e.target.value));
          }}
          onPointerUp={() => {
            if (!released.current) {
              released.current = true;
              ed.requeue(); // with "live" on
            }
          }}
          onKeyUp={(e) => {
            if (e.key.startsWith('Arrow')) ed.requeue();
          }}
        />
      )}
      <input
        type="number"
        className={`nodrag num ${outOfRange ? 'invalid' : ''}`}
        data-testid={`input-${input.name}`}
        min={min}
        max={max}
        step={step}
        value={text ?? (Number.isFinite(num) ? String(num) : '')}
        onChange={(e) => {
          setText(e.target.value);
          commitText(e.target.value);
        }}
        onBlur={() => setText(null)}
      />
      <button
        className={`nodrag icon ${node.sweep?.[input.name] !== undefined ? 'on' : ''}`}
        title="Sweep: queue once per value"
        data-testid={`sweep-${input.name}`}
        onClick={() => ed.setSweep(id, input.name, node.sweep?.[input.name] !== undefined ? null : '')}
      >
        ⇄
      </button>
      {node.sweep?.[input.name] !== undefined && (
        <input
          type="text"
          className={`nodrag sweep ${node.sweep[input.name] && !parseSweep(node.sweep[input.name]) ? 'invalid' : ''}`}
          data-testid={`sweep-values-${input.name}`}
          placeholder="0.3, 0.5, 0.7 or 0.2..0.8 x4"
          value={node.sweep[input.name]}
          onChange={(e) => ed.setSweep(id, input.name, e.target.value)}
        />
      )}
      {seed && (
        <>
          <button
            className="nodrag icon"
            title="Randomize now"
            data-testid={`randomize-${input.name}`}
            onClick={() => ed.setValue(id, input.name, Math.floor(Math.random() * 2 ** 32))}
          >
            ⚄
          </button>
          <SeedMode id={id} input={input.name} mode={node.control?.[input.name] ?? 'fixed'} />
        </>
      )}
    </div>
  );
}

function SeedMode({ id, input, mode }: { id: string; input: string; mode: string }) {
  const ed = useEditor();
  return (
    <select
      className="nodrag nowheel mode"
      title="After each queue"
      data-testid={`control-${input}`}
      value={mode}
      onChange={(e) => ed.setControl(id, input, e.target.value)}
    >
      <option value="fixed">fixed</option>
      <option value="randomize">randomize</option>
      <option value="increment">increment</option>
    </select>
  );
}

function ComboWidget({ id, node, input, value }: { id: string; node: GNode['data']; input: InputDef; value: unknown }) {
  const ed = useEditor();
  const extra = ed.extraChoices(node.classType, input.name);
  const options = useMemo(() => {
    const all = [...input.choices.map(String), ...extra.filter((x) => !input.choices.includes(x))];
    if (value !== undefined && value !== '' && !all.includes(String(value))) all.push(String(value));
    return all;
  }, [input.choices, extra, value]);
  return (
    <select
      className="nodrag nowheel"
      data-testid={`input-${input.name}`}
      value={String(value ?? '')}
      onChange={(e) => ed.setValue(id, input.name, e.target.value)}
    >
      {options.map((o) => (
        <option key={o} value={o}>
          {o}
        </option>
      ))}
    </select>
  );
}

function isImageInput(cls: string, input: InputDef) {
  return !!input.literal && (!!input.options.image_upload || (cls === 'LoadImage' && input.name === 'image'));
}

function Widget({ id, node, input }: { id: string; node: GNode['data']; input: InputDef }) {
  const ed = useEditor();
  const value = node.values[input.name];
  switch (input.literal) {
    case 'INT':
    case 'FLOAT':
      return <NumberWidget id={id} node={node} input={input} value={value} />;
    case 'BOOLEAN':
      return (
        <input
          type="checkbox"
          className="nodrag"
          data-testid={`input-${input.name}`}
          checked={!!value}
          onChange={(e) => ed.setValue(id, input.name, e.target.checked)}
        />
      );
    case 'COMBO':
      return <ComboWidget id={id} node={node} input={input} value={value} />;
    default:
      return input.options.multiline ? (
        <textarea
          className="nodrag nowheel"
          data-testid={`input-${input.name}`}
          rows={3}
          value={String(value ?? '')}
          onChange={(e) => ed.setValue(id, input.name, e.target.value)}
        />
      ) : (
        <input
          type="text"
          className="nodrag"
          data-testid={`input-${input.name}`}
          value={String(value ?? '')}
          onChange={(e) => ed.setValue(id, input.name, e.target.value)}
        />
      );
  }
}

/** Before / after: the input under the result, a slider moving the split between them. */
function BeforeAfter({ before, after }: { before: string; after: string }) {
  const [split, setSplit] = useState(50);
  return (
    <div className="before-after nodrag nowheel" data-testid="before-after">
      <div className="ba-stage">
        <img src={before} alt="before" data-testid="compare-before" draggable={false} />
        <img
          src={after}
          alt="after"
          data-testid="compare-after"
          draggable={false}
          style={{ clipPath: `inset(0 0 0 ${split}%)` }}
        />
      </div>
      <input
        type="range"
        min={0}
        max={100}
        value={split}
        data-testid="compare-slider"
        onChange={(e) => setSplit(Number(e.target.value))}
      />
    </div>
  );
}

/** A two-input sweep's results as an X/Y grid: the first input's values across, the second's
 * down, each cell clickable to full size. */
function SweepGrid({ strip }: { strip: NonNullable<NodeRun['strip']> }) {
  const [xName, yName] = strip[0].axes;
  const xs = [...new Set(strip.map((r) => r.values[0]))];
  const ys = [...new Set(strip.map((r) => r.values[1]))];
  const cell = (x: string, y: string) => strip.find((r) => r.values[0] === x && r.values[1] === y);
  return (
    <table className="gnode-grid nodrag nowheel" data-testid="sweep-grid">
      <thead>
        <tr>
          <th data-testid="grid-corner">
            {yName} ↓ · {xName} →
          </th>
          {xs.map((x) => (
            <th key={x} data-testid="grid-x">
              {x}
            </th>
          ))}
        </tr>
      </thead>
      <tbody>
        {ys.map((y) => (
          <tr key={y}>
            <th data-testid="grid-y">{y}</th>
            {xs.map((x) => {
              const r = cell(x, y);
              const img = r?.images[0];
              return (
                <td key={x}>
                  {r && img && (
                    <a href={viewUrl(img, r.key)} target="_blank" rel="noreferrer">
                      <img className="gnode-image" data-testid="grid-image" src={viewUrl(img, r.key)} alt={r.label} title={r.label} draggable={false} />
                    </a>
                  )}
                </td>
              );
            })}
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function UploadButton({ id, input }: { id: string; input: string }) {
  const ed = useEditor();
  const ref = useRef<HTMLInputElement>(null);
  const [busy, setBusy] = useState(false);
  return (
    <>
      <button className="nodrag upload" data-testid="upload-button" disabled={busy} onClick={() => ref.current?.click()}>
        {busy ? 'Uploading…' : 'Upload image…'}
      </button>
      <input
        ref={ref}
        type="file"
        accept="image/*"
        hidden
        data-testid="upload-input"
        onChange={async (e) => {
          const f = e.target.files?.[0];
          e.target.value = '';
          if (!f) return;
          setBusy(true);
          try {
            await ed.upload(id, input, f);
          } finally {
            setBusy(false);
          }
        }}
      />
    </>
  );
}

function GraphNodeView({ id, data, selected }: { id: string; data: GNode['data']; selected: boolean }) {
  const ed = useEditor();
  const run = useNodeRun(id);
  const [renaming, setRenaming] = useState(false);
  const [painting, setPainting] = useState(false);
  const [comparing, setComparing] = useState<string | null>(null);
  // Zoomed far out, widgets are drawn as plain text: form controls are the costliest part of a
  // node to lay out and paint, and unreadable at that size anyway.
  const zoomedOut = useStore((s) => s.transform[2] < LOD_ZOOM);
  const def = ed.catalogue[data.classType];
  const connections = useNodeConnections({ handleType: 'target' });
  const linked = useMemo(() => new Map(connections.map((c) => [handleInput(c.targetHandle), c.edgeId])), [connections]);

  const inputs = def?.inputs ?? Object.keys(data.values).map((name) => ({ name, type: '*', literal: 'STRING' as const, optional: false, choices: [], options: {} }));
  const sockets = inputs.filter((i) => !i.literal);
  const widgets = inputs.filter((i) => i.literal);
  const outputs = def?.outputs ?? [];
  const rows = Math.max(sockets.length, outputs.length);
  const issues = run.errors ?? [];
  const issueFor = (name: string) => issues.filter((e) => e.input === name);
  const nodeIssues = issues.filter((e) => !e.input || !inputs.some((i) => i.name === e.input));
  const title = data.title || def?.displayName || data.classType;
  const pct = run.progress && run.progress.max > 0 ? Math.min(100, (100 * run.progress.value) / run.progress.max) : null;
  const images = run.preview ? [run.preview] : (run.images ?? []).map((img) => viewUrl(img, run.imagesKey));
  const imageInput = widgets.find((w) => isImageInput(data.classType, w));
  const loadPreview = imageInput && !linked.has(imageInput.name) && data.values[imageInput.name] ? viewUrl({ filename: String(data.values[imageInput.name]), type: 'input' }) : null;

  return (
    <div
      className={[
        'gnode',
        selected ? 'selected' : '',
        run.status ? `is-${run.status}` : '',
        issues.length ? 'has-error' : '',
        def ? '' : 'unknown',
        def?.outputNode ? 'output-node' : '',
      ].join(' ')}
      data-testid="node"
      data-id={id}
      data-class={data.classType}
      data-color={data.color}
      style={data.bgcolor ? { background: data.bgcolor } : undefined}
      data-status={run.status ?? ''}
      data-progress={run.progress ? `${run.progress.value}/${run.progress.max}` : undefined}
    >
      <div className="gnode-head" title={def?.description || data.classType} style={data.color ? { background: data.color } : undefined}>
        {renaming ? (
          <input
            className="nodrag gnode-rename"
            data-testid="rename"
            autoFocus
            defaultValue={title}
            onBlur={(e) => {
              ed.setTitle(id, e.target.value);
              setRenaming(false);
            }}
            onKeyDown={(e) => {
              if (e.key === 'Enter') (e.target as HTMLInputElement).blur();
              if (e.key === 'Escape') setRenaming(false);
            }}
          />
        ) : (
          <span className="gnode-title" title="Double-click to rename" onDoubleClick={() => setRenaming(true)}>
            {title}
          </span>
        )}
        {run.status === 'cached' && <span className="badge cached" data-testid="badge-cached">cached</span>}
        {run.status === 'executing' && <span className="badge executing">running</span>}
        {run.status === 'done' && <span className="badge done">✓</span>}
        <span className="gnode-id">#{id}</span>
      </div>
      {pct !== null && run.status === 'executing' && (
        <div className="progress" data-testid="progress">
          <div style={{ width: `${pct}%` }} />
          <span>
            {run.progress!.value}/{run.progress!.max}
          </span>
        </div>
      )}
      {!def && <div className="gnode-warning">Unknown node type “{data.classType}”</div>}
      {Array.from({ length: rows }, (_, i) => {
        const inp = sockets[i];
        const out = outputs[i];
        return (
          <div className="gnode-row" key={i}>
            {inp ? (
              <span className={`sock-in ${issueFor(inp.name).length ? 'bad' : ''}`} data-input={inp.name}>
                <Handle
                  type="target"
                  position={Position.Left}
                  id={inHandle(inp.name)}
                  data-type={inp.type}
                  style={{ background: typeColour(inp.type) }}
                  {...inputSocket(linked.get(inp.name))}
                />
                {inp.name}
                {inp.optional && <em> (opt)</em>}
              </span>
            ) : (
              <span />
            )}
            {out ? (
              <span className="sock-out" data-output={i}>
                {out.name}
                <Handle
                  type="source"
                  position={Position.Right}
                  id={outHandle(i)}
                  data-type={out.type}
                  style={{ background: typeColour(out.type) }}
                />
              </span>
            ) : (
              <span />
            )}
          </div>
        );
      })}
      {sockets.map((inp) =>
        issueFor(inp.name).map((e, k) => (
          <div className="input-error" key={`${inp.name}${k}`} data-testid="input-error" data-input={inp.name}>
            {inp.name}: {e.message}
          </div>
        )),
      )}
      {widgets.map((input) => (
        <div className={`gnode-widget ${issueFor(input.name).length ? 'bad' : ''}`} key={input.name} data-input={input.name}>
          <Handle
            type="target"
            position={Position.Left}
            id={inHandle(input.name)}
            className="widget-handle"
            data-type={input.type}
            style={{ background: typeColour(input.type) }}
            {...inputSocket(linked.get(input.name))}
          />
          <label title={input.options.tooltip ?? ''}>{input.name}</label>
          {linked.has(input.name) ? (
            <span className="linked">linked</span>
          ) : zoomedOut ? (
            <span className={`lod-value ${input.options.multiline ? 'tall' : ''}`}>{String(data.values[input.name] ?? '')}</span>
          ) : (
            <Widget id={id} node={data} input={input} />
          )}
          {issueFor(input.name).map((e, k) => (
            <div className="input-error" key={k} data-testid="input-error" data-input={input.name}>
              {e.message}
            </div>
          ))}
        </div>
      ))}
      {imageInput && !linked.has(imageInput.name) && !zoomedOut && (
        <div className="gnode-upload">
          <UploadButton id={id} input={imageInput.name} />
          {loadPreview && (
            <button className="nodrag upload" data-testid="edit-mask" onClick={() => setPainting(true)}>
              Edit mask
            </button>
          )}
        </div>
      )}
      {painting &&
        loadPreview &&
        imageInput &&
        createPortal(
          <MaskPainter
            src={loadPreview}
            onClose={() => setPainting(false)}
            onSave={async (png) => {
              const base = String(data.values[imageInput.name]).replace(/\.[^.]*$/, '').replace(/^.*\//, '');
              await ed.upload(id, imageInput.name, new File([png], `${base}_mask.png`, { type: 'image/png' }));
              setPainting(false);
            }}
          />,
          document.body,
        )}
      {nodeIssues.map((e, k) => (
        <div className="node-error" key={k} data-testid="node-error">
          {e.message}
        </div>
      ))}
      {run.warnings?.map((w, k) => (
        <div className="node-warning" key={k} data-testid="node-warning">
          {w}
        </div>
      ))}
      {run.texts?.map((t, k) => (
        <pre className="gnode-text nodrag nowheel" key={k} data-testid="node-text">
          {t}
        </pre>
      ))}
      {loadPreview && <img className="gnode-image" data-testid="input-image" src={loadPreview} alt="" draggable={false} />}
      {run.strip && run.strip.length > 0 && run.strip[0].axes.length === 2 && <SweepGrid strip={run.strip} />}
      {run.strip && run.strip.length > 0 && run.strip[0].axes.length !== 2 && (
        <div className="gnode-strip nodrag nowheel" data-testid="sweep-strip">
          {run.strip.map((r) =>
            r.images.map((img, k) => (
              <figure key={`${r.key}-${k}`}>
                <a href={viewUrl(img, r.key)} target="_blank" rel="noreferrer">
                  <img className="gnode-image" data-testid="strip-image" src={viewUrl(img, r.key)} alt={r.label} draggable={false} />
                </a>
                <figcaption data-testid="strip-label">{r.label}</figcaption>
              </figure>
            )),
          )}
        </div>
      )}
      {comparing && images.length > 0 && (
        <BeforeAfter before={comparing} after={images[images.length - 1]} />
      )}
      {def?.outputNode && images.length > 0 && !run.preview && !(run.strip && run.strip.length) && (comparing || ed.compareFor(id)) && (
        <button
          className="nodrag upload"
          data-testid="compare-button"
          onClick={() => setComparing(comparing ? null : ed.compareFor(id))}
        >
          {comparing ? 'Close compare' : 'Compare with input'}
        </button>
      )}
      {images.length > 0 && !comparing && !(run.strip && run.strip.length) && (
        <div className="gnode-images">
          {images.map((src) => (
            <a key={src} href={src} target="_blank" rel="noreferrer" className="nodrag">
              <img className="gnode-image" data-testid={run.preview ? 'preview-image' : 'node-image'} src={src} alt="" draggable={false} />
            </a>
          ))}
        </div>
      )}
    </div>
  );
}

// React Flow hands a node its position too; the body depends only on id, data and selection, so
// moving nodes (200 selected ones included) re-renders none of their contents.
const GraphNodeBody = memo(GraphNodeView);

export const GraphNode = memo(function GraphNode({ id, data, selected }: NodeProps<GNode>) {
  return <GraphNodeBody id={id} data={data} selected={!!selected} />;
});
