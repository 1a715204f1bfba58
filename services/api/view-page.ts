// The public view page: the image with <picture> sources for its AVIF and WebP variants.
import type { presentImage } from './present.js';

type Presented = ReturnType<typeof presentImage>;

const esc = (s: string) =>
  s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c,
  );

export function renderViewPage(img: Presented): string {
  const full = (fmt: string) => img.variants.find((v) => v.size === 'full' && v.format === fmt);
  const medium = (fmt: string) => img.variants.find((v) => v.size === 'medium' && v.format === fmt);
  const sources = ['avif', 'webp']
    .map((fmt) => full(fmt) ?? medium(fmt))
    .filter((v) => v !== undefined)
    .map((v) => `<source type="image/${v.format}" srcset="${esc(v.url)}">`)
    .join('\n      ');
  const title = esc(img.original_filename ?? 'Image');
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>${title} · PixelFox</title>
<style>body{margin:0;background:#111;color:#eee;font:14px system-ui;display:flex;flex-direction:column;align-items:center}
img{max-width:100vw;max-height:90vh;height:auto}p{opacity:.7}</style></head>
<body>
  <picture>
      ${sources}
      <img src="${esc(img.url)}" width="${img.width}" height="${img.height}" alt="${title}">
  </picture>
  <p>${img.width} × ${img.height} · ${img.status}</p>
</body>
</html>`;
}
