// The queue and history panel: running and pending prompts (cancel one), past results as
// thumbnails (full size on click) with "Load" restoring the graph that made them. Read from the
// server's /queue and /history, so it survives restarts of the page and of the server. As in
// ComfyUI's queue sidebar, it also frees the server's memory (POST /free, after the running job).
import { useCallback, useEffect, useState } from 'react';
import { deleteQueued, freeMemory, getHistory, getQueue, viewUrl } from './api';
import type { ApiWorkflow } from './workflow';

interface Entry {
  id: string;
  number: number;
  images: { filename: string; subfolder: string; type: string }[];
  workflow: ApiWorkflow | null;
  status: string;
}

function entries(history: Record<string, any>): Entry[] {
  return Object.entries(history ?? {})
    .map(([id, h]) => {
      const [number, , prompt, extra] = h.prompt ?? [];
      const images = Object.values(h.outputs ?? {}).flatMap((o: any) => o?.images ?? []);
      const workflow = extra?.extra_pnginfo?.workflow ?? prompt ?? null;
      return { id, number: Number(number), images, workflow, status: h.status?.status_str ?? '' };
    })
    .sort((a, b) => b.number - a.number);
}

export function HistoryPanel({ refresh, onLoad }: { refresh: number; onLoad: (wf: ApiWorkflow) => void }) {
  const [queue, setQueue] = useState<{ running: string[]; pending: string[] }>({ running: [], pending: [] });
  const [past, setPast] = useState<Entry[]>([]);
  const reload = useCallback(() => {
    getQueue()
      .then((q) =>
        setQueue({
          running: (q.queue_running ?? []).map((j: any[]) => String(j[1])),
          pending: (q.queue_pending ?? []).map((j: any[]) => String(j[1])),
        }),
      )
      .catch(() => {});
    getHistory(24)
      .then((h) => setPast(entries(h)))
      .catch(() => {});
  }, []);
  useEffect(reload, [reload, refresh]);
  return (
    <aside className="history" data-testid="history-panel">
      <div className="memory">
        <button data-testid="unload-models" onClick={() => void freeMemory(true, false)} title="Move the loaded models off the device">
          Unload models
        </button>
        <button data-testid="free-memory" onClick={() => void freeMemory(true, true)} title="Also drop the cached results and the loaded models">
          Free memory
        </button>
      </div>
      <h3>Queue</h3>
      {queue.running.map((id) => (
        <div className="job" key={id} data-testid="job-running">
          running {id.slice(0, 8)}
        </div>
      ))}
      {queue.pending.map((id) => (
        <div className="job" key={id} data-testid="job-pending">
          pending {id.slice(0, 8)}
          <button data-testid="cancel-job" onClick={() => void deleteQueued(id).then(reload)}>
            Cancel
          </button>
        </div>
      ))}
      <h3>History</h3>
      {past.map((e) => (
        <div className="past" key={e.id} data-testid="history-entry" data-status={e.status}>
          {e.images.slice(0, 4).map((img) => (
            <a key={img.filename} href={viewUrl(img)} target="_blank" rel="noreferrer">
              <img src={viewUrl(img)} alt="" data-testid="history-image" />
            </a>
          ))}
          {e.workflow && (
            <button data-testid="history-load" onClick={() => onLoad(e.workflow as ApiWorkflow)}>
              Load
            </button>
          )}
        </div>
      ))}
    </aside>
  );
}
