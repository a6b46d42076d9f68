// The server's ComfyUI-compatible HTTP and websocket API, relative to the page's location.

const base = () => new URL('.', window.location.href);
export const apiUrl = (path: string) => new URL(path.replace(/^\//, ''), base()).toString();

export class HttpError extends Error {
  constructor(
    public status: number,
    public body: any,
  ) {
    super(body?.error?.message ?? body?.message ?? `HTTP ${status}`);
  }
}

async function json(res: Response) {
  const text = await res.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = { message: text.slice(0, 300) };
  }
  if (!res.ok) throw new HttpError(res.status, body);
  return body;
}

export const getObjectInfo = () => fetch(apiUrl('object_info')).then(json);

/** POST a JSON body to a route; the JSON answer (an HttpError when refused). */
const postJson = (path: string, body: unknown) =>
  fetch(apiUrl(path), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  }).then(json);

/** What every prompt carries: the canvas's workflow (SaveImage embeds it) and a request for
 * live previews (sent only to prompts that ask, as ComfyUI sends them). */
const extraData = (workflow: unknown) => ({ extra_pnginfo: { workflow }, preview_method: 'auto' });

export const queuePrompt = (prompt: unknown, clientId: string, workflow: unknown) =>
  postJson('prompt', { prompt, client_id: clientId, extra_data: extraData(workflow) });

/** One prompt per value of the sweep's axes (the server's POST /sweep). */
export const queueSweep = (prompt: unknown, clientId: string, workflow: unknown, sweep: unknown) =>
  postJson('sweep', { prompt, client_id: clientId, sweep, extra_data: extraData(workflow) });

/** A workflow in the other format, converted by the server (ComfyUI's canvas files). */
export const convertWorkflow = (workflow: unknown, to: 'api' | 'ui') =>
  postJson('workflow/convert', { workflow, to });

export const interrupt = () => fetch(apiUrl('interrupt'), { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });

/** ComfyUI's POST /free, done by the server between jobs: `unload_models` moves the models off
 * the device; `free_memory` also drops the cached results and the loaded models. */
export const freeMemory = (unloadModels: boolean, dropEverything: boolean) =>
  fetch(apiUrl('free'), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ unload_models: unloadModels, free_memory: dropEverything }),
  });

export const getQueueRemaining = () =>
  fetch(apiUrl('prompt'))
    .then(json)
    .then((b) => Number(b?.exec_info?.queue_remaining ?? 0));

export const getQueue = () => fetch(apiUrl('queue')).then(json);

export const getHistory = (maxItems: number) => fetch(apiUrl(`history?max_items=${maxItems}`)).then(json);

export const deleteQueued = (promptId: string) => postJson('queue', { delete: [promptId] });

export async function uploadImage(file: File): Promise<{ name: string; subfolder: string; type: string }> {
  const form = new FormData();
  form.append('image', file, file.name);
  form.append('overwrite', 'false');
  return fetch(apiUrl('upload/image'), { method: 'POST', body: form }).then(json);
}

export function viewUrl(img: { filename: string; subfolder?: string; type?: string }, bust?: string) {
  const q = new URLSearchParams({ filename: img.filename, subfolder: img.subfolder ?? '', type: img.type ?? 'output' });
  if (bust) q.set('t', bust);
  return apiUrl(`view?${q}`);
}

export interface SocketHandlers {
  onMessage: (type: string, data: any) => void;
  onPreview: (blob: Blob) => void;
  onState: (connected: boolean) => void;
}

/** A websocket that reconnects; returns a function that closes it for good. */
export function connectSocket(clientId: string, h: SocketHandlers): () => void {
  let ws: WebSocket | null = null;
  let closed = false;
  let retry = 500;
  const open = () => {
    const url = new URL(apiUrl(`ws?clientId=${encodeURIComponent(clientId)}`));
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      retry = 500;
      h.onState(true);
    };
    ws.onclose = () => {
      h.onState(false);
      if (!closed) setTimeout(open, (retry = Math.min(retry * 2, 5000)));
    };
    ws.onerror = () => ws?.close();
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') {
        try {
          const msg = JSON.parse(ev.data);
          h.onMessage(msg.type, msg.data ?? {});
        } catch {
          /* not ours */
        }
        return;
      }
      const buf = ev.data as ArrayBuffer;
      if (buf.byteLength <= 8) return;
      const view = new DataView(buf);
      if (view.getUint32(0) !== 1) return;
      const mime = view.getUint32(4) === 2 ? 'image/png' : 'image/jpeg';
      h.onPreview(new Blob([buf.slice(8)], { type: mime }));
    };
  };
  open();
  return () => {
    closed = true;
    ws?.close();
  };
}
