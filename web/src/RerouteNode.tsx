import { memo } from 'react';
import { Handle, Position, useNodeConnections, useStore, type NodeProps } from '@xyflow/react';
import { typeColour } from './catalogue';
import { inputSocket } from './GraphNode';
import { REROUTE_INPUT, REROUTE_SIZE } from './reroutes';
import { inHandle, outHandle, type GNode } from './workflow';

/** A reroute: a small pass-through dot on a link, ComfyUI's size, coloured by what flows
 * through it (the type of the link into it). Dragged like a node; its linked input picks the
 * link up like any other input. */
export const RerouteNode = memo(function RerouteNode({ id, selected }: NodeProps<GNode>) {
  const [into] = useNodeConnections({ handleType: 'target' });
  const type = useStore((s) => (into ? (s.edgeLookup.get(into.edgeId)?.data as { type?: string } | undefined)?.type : undefined)) ?? '*';
  const colour = typeColour(type);
  return (
    <div
      className={`reroute ${selected ? 'selected' : ''}`}
      data-testid="reroute"
      data-id={id}
      data-type={type}
      title={`Reroute (${type})`}
      style={{ ...REROUTE_SIZE, borderColor: selected ? undefined : colour }}
    >
      <Handle type="target" position={Position.Left} id={inHandle(REROUTE_INPUT)} data-type={type} style={{ background: colour }} {...inputSocket(into?.edgeId)} />
      <span className="reroute-dot" style={{ background: colour }} />
      <Handle type="source" position={Position.Right} id={outHandle(0)} data-type={type} style={{ background: colour }} />
    </div>
  );
});
