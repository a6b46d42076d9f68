// The mask painter of a LoadImage: paint where the picture should be repainted (brush, erase,
// invert, clear) over it. Saved as ComfyUI's mask editor saves: the picture with the mask in
// its alpha (transparent = masked, LoadImage's MASK is 1 - alpha), uploaded to the input folder.
import { useEffect, useRef, useState } from 'react';

/** Redraw the mask layer (red, its alpha the mask) from each pixel's current mask alpha and
 * its index into RGBA data. */
function setMask(c: HTMLCanvasElement, alphaAt: (alpha: number, i: number) => number) {
  const g = c.getContext('2d')!;
  const m = g.getImageData(0, 0, c.width, c.height);
  for (let i = 0; i < m.data.length; i += 4) {
    m.data[i] = 255;
    m.data[i + 3] = alphaAt(m.data[i + 3], i + 3);
  }
  g.globalCompositeOperation = 'source-over';
  g.putImageData(m, 0, 0);
}

export function MaskPainter({ src, onSave, onClose }: { src: string; onSave: (png: Blob) => Promise<void>; onClose: () => void }) {
  const picture = useRef<HTMLImageElement | null>(null);
  const mask = useRef<HTMLCanvasElement>(null);
  const [brush, setBrush] = useState(16);
  const [erase, setErase] = useState(false);
  const [ready, setReady] = useState(false);
  const painting = useRef(false);

  useEffect(() => {
    const img = new Image();
    img.crossOrigin = 'anonymous';
    img.onload = () => {
      picture.current = img;
      const c = mask.current!;
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      // The picture's own transparency is its mask so far.
      const probe = document.createElement('canvas');
      probe.width = c.width;
      probe.height = c.height;
      const p = probe.getContext('2d')!;
      p.drawImage(img, 0, 0);
      const alpha = p.getImageData(0, 0, c.width, c.height).data;
      setMask(c, (_, i) => 255 - alpha[i]);
      setReady(true);
    };
    img.src = src;
  }, [src]);

  const paint = (e: React.PointerEvent<HTMLCanvasElement>) => {
    const c = mask.current!;
    const r = c.getBoundingClientRect();
    const x = ((e.clientX - r.left) * c.width) / r.width;
    const y = ((e.clientY - r.top) * c.height) / r.height;
    const g = c.getContext('2d')!;
    g.globalCompositeOperation = erase ? 'destination-out' : 'source-over';
    g.fillStyle = 'rgba(255, 0, 0, 1)';
    g.beginPath();
    g.arc(x, y, (brush * c.width) / r.width / 2, 0, 2 * Math.PI);
    g.fill();
  };

  const transform = (f: (a: number) => number) => setMask(mask.current!, (a) => f(a));

  const save = async () => {
    const img = picture.current!;
    const c = mask.current!;
    const out = document.createElement('canvas');
    out.width = c.width;
    out.height = c.height;
    const g = out.getContext('2d')!;
    g.drawImage(img, 0, 0);
    const pixels = g.getImageData(0, 0, c.width, c.height);
    const m = c.getContext('2d')!.getImageData(0, 0, c.width, c.height);
    for (let i = 0; i < pixels.data.length; i += 4) pixels.data[i + 3] = 255 - m.data[i + 3];
    g.putImageData(pixels, 0, 0);
    const blob = await new Promise<Blob | null>((res) => out.toBlob(res, 'image/png'));
    if (blob) await onSave(blob);
  };

  return (
    <div className="mask-painter" data-testid="mask-painter">
      <div className="mask-tools">
        <label>
          brush
          <input type="range" min={2} max={96} value={brush} data-testid="mask-brush" onChange={(e) => setBrush(Number(e.target.value))} />
        </label>
        <button className={erase ? 'on' : ''} data-testid="mask-erase" onClick={() => setErase((v) => !v)}>
          Erase
        </button>
        <button data-testid="mask-invert" onClick={() => transform((a) => 255 - a)}>
          Invert
        </button>
        <button data-testid="mask-clear" onClick={() => transform(() => 0)}>
          Clear
        </button>
        <span className="grow" />
        <button data-testid="mask-save" disabled={!ready} onClick={() => void save()}>
          Save
        </button>
        <button data-testid="mask-cancel" onClick={onClose}>
          Cancel
        </button>
      </div>
      <div className="mask-stage">
        <div className="mask-frame">
        <img src={src} alt="" draggable={false} />
        <canvas
          ref={mask}
          data-testid="mask-canvas"
          onPointerDown={(e) => {
            painting.current = true;
            e.currentTarget.setPointerCapture(e.pointerId);
            paint(e);
          }}
          onPointerMove={(e) => painting.current && paint(e)}
          onPointerUp={() => (painting.current = false)}
        />
        </div>
      </div>
    </div>
  );
}
