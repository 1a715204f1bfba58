// Real images in, real files out: fixtures from shared/fixtures/exif-samples plus images generated
// here (PNG, GIF, WebP, AVIF with sharp; BMP written byte by byte).
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';
import t from 'tap';
import sharp from 'sharp';
import {
  configureMedia,
  DEFAULT_RENDER_PIXEL_BUDGET,
  detectAvifEngines,
  parseBmpHeader,
  probeImage,
  renderVariants,
} from '../../services/variants/media.js';
import type { ProbeResult, RenderedVariant } from '../../services/variants/media.js';
import { planVariants } from '../../services/variants/plan.js';
import type { Entitlements, VariantSpec } from '../../services/variants/plan.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../shared/fixtures/exif-samples/jpg');
const fixture = (rel: string): string => path.join(FIXTURES, rel);
const ID = '6f1c2b3a-4d5e-4f60-8a9b-0c1d2e3f4a5b';
const DATE = '2024/05/17';
const ALL: Entitlements = { original: true, webp: true, avif: true };

async function render(
  src: string,
  outDir: string,
  ent: Entitlements = ALL,
  opts: {
    avifEngine?: 'sharp' | 'ffmpeg';
    pixelLimit?: number;
    parallel?: number;
    avifMaxPixels?: number;
  } = {},
): Promise<{ probe: ProbeResult; specs: VariantSpec[]; out: RenderedVariant[]; progress: number }> {
  const probe = await probeImage(src, opts.pixelLimit === undefined ? {} : { pixelLimit: opts.pixelLimit });
  const specs = planVariants(
    { imageId: ID, datePath: DATE, format: probe.format, width: probe.width, height: probe.height },
    ent,
    opts.avifMaxPixels === undefined ? {} : { avifMaxPixels: opts.avifMaxPixels },
  );
  let progress = 0;
  const out = await renderVariants(src, probe, specs, (rel) => path.join(outDir, rel), {
    avifEngine: opts.avifEngine ?? 'sharp',
    ...(opts.pixelLimit === undefined ? {} : { pixelLimit: opts.pixelLimit }),
    ...(opts.parallel === undefined ? {} : { parallel: opts.parallel }),
    onProgress: () => progress++,
  });
  return { probe, specs, out, progress };
}

/** What the bytes are, from their magic numbers. */
function sniff(buf: Buffer): string {
  if (buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) return 'jpeg';
  if (buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]))) return 'png';
  if (buf.toString('latin1', 0, 6) === 'GIF89a' || buf.toString('latin1', 0, 6) === 'GIF87a') return 'gif';
  if (buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') return 'webp';
  if (buf.toString('latin1', 4, 8) === 'ftyp' && ['avif', 'avis'].includes(buf.toString('latin1', 8, 12)))
    return 'avif';
  return 'unknown';
}
const EXT_FORMAT: Record<string, string> = {
  jpg: 'jpeg',
  png: 'png',
  gif: 'gif',
  webp: 'webp',
  avif: 'avif',
};

async function walk(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const files: string[] = [];
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) files.push(...(await walk(p)));
    else files.push(p);
  }
  return files;
}

/** Every written file: bytes match extension, size and hash match the report, no temp files left. */
async function checkOutputs(t: Tap, dir: string, out: RenderedVariant[]): Promise<void> {
  const files = await walk(dir);
  t.same(
    files.filter((f) => path.basename(f).startsWith('.') || f.endsWith('.tmp')),
    [],
    'no temp files remain',
  );
  t.same(
    files.map((f) => path.relative(dir, f)).sort(),
    out.map((r) => r.spec.relPath).sort(),
    'exactly the planned files',
  );
  for (const r of out) {
    const buf = await readFile(path.join(dir, r.spec.relPath));
    const ext = path.extname(r.spec.relPath).slice(1);
    t.equal(sniff(buf), EXT_FORMAT[ext], `${r.spec.variantType}: bytes are ${EXT_FORMAT[ext]}`);
    t.equal(r.bytes, buf.length, `${r.spec.variantType}: byte count`);
    t.equal(r.sha256, createHash('sha256').update(buf).digest('hex'), `${r.spec.variantType}: sha256`);
    const meta = await sharp(buf).metadata();
    t.equal(meta.width, r.width, `${r.spec.variantType}: reported width`);
    t.equal(meta.pageHeight ?? meta.height, r.height, `${r.spec.variantType}: reported height`);
  }
}
/** The assertions the helpers use (a tap Test satisfies it). */
interface Tap {
  ok(value: unknown, message: string): boolean;
  notOk(value: unknown, message: string): boolean;
  equal(found: unknown, wanted: unknown, message: string): boolean;
  same(found: unknown, wanted: unknown, message: string): boolean;
}

/** A BMP file: 24/32-bit BGR(A) or 8-bit palette; pixel(x, y) with y = 0 at the top. */
function encodeBmp(
  width: number,
  height: number,
  bpp: 8 | 24 | 32,
  pixel: (x: number, y: number) => [number, number, number, number],
  opts: { topDown?: boolean } = {},
): Buffer {
  const rowBytes = Math.ceil((width * bpp) / 32) * 4;
  const palette: [number, number, number][] = [];
  const paletteIndex = new Map<string, number>();
  const paletteBytes = bpp === 8 ? 256 * 4 : 0;
  const offset = 14 + 40 + paletteBytes;
  const buf = Buffer.alloc(offset + rowBytes * height);
  buf.write('BM', 0, 'latin1');
  buf.writeUInt32LE(buf.length, 2);
  buf.writeUInt32LE(offset, 10);
  buf.writeUInt32LE(40, 14);
  buf.writeInt32LE(width, 18);
  buf.writeInt32LE(opts.topDown ? -height : height, 22);
  buf.writeUInt16LE(1, 26);
  buf.writeUInt16LE(bpp, 28);
  buf.writeUInt32LE(0, 30); // BI_RGB
  buf.writeUInt32LE(rowBytes * height, 34);
  buf.writeInt32LE(2835, 38);
  buf.writeInt32LE(2835, 42);
  for (let y = 0; y < height; y++) {
    const row = opts.topDown ? y : height - 1 - y;
    for (let x = 0; x < width; x++) {
      const [r, g, b, a] = pixel(x, y);
      const p = offset + row * rowBytes + x * (bpp / 8);
      if (bpp === 8) {
        const key = `${r},${g},${b}`;
        let idx = paletteIndex.get(key);
        if (idx === undefined) {
          idx = palette.length;
          palette.push([r, g, b]);
          paletteIndex.set(key, idx);
        }
        buf[p] = idx;
      } else {
        buf[p] = b;
        buf[p + 1] = g;
        buf[p + 2] = r;
        if (bpp === 32) buf[p + 3] = a;
      }
    }
  }
  if (bpp === 8) {
    buf.writeUInt32LE(palette.length, 46);
    palette.forEach(([r, g, b], i) => {
      buf[54 + i * 4] = b;
      buf[54 + i * 4 + 1] = g;
      buf[54 + i * 4 + 2] = r;
    });
  }
  return buf;
}

/** Mean colour of a horizontal band of an image file, after decoding. */
async function bandColour(file: string, fromY: number, toY: number): Promise<number[]> {
  const { data, info } = await sharp(file).removeAlpha().raw().toBuffer({ resolveWithObject: true });
  const sum: [number, number, number] = [0, 0, 0];
  let n = 0;
  const y0 = Math.floor(info.height * fromY);
  const y1 = Math.ceil(info.height * toY);
  for (let y = y0; y < y1; y++) {
    for (let x = 0; x < info.width; x++) {
      const i = (y * info.width + x) * info.channels;
      sum[0] += data[i] ?? 0;
      sum[1] += data[i + 1] ?? 0;
      sum[2] += data[i + 2] ?? 0;
      n++;
    }
  }
  return sum.map((s) => Math.round(s / n));
}
const near = (a: number[], b: number[], tol: number): boolean =>
  a.every((v, i) => Math.abs(v - (b[i] ?? 0)) <= tol);

/** Small greyscale fingerprint for "does this look like the same picture". */
async function fingerprint(file: string): Promise<Buffer> {
  return sharp(file).resize(32, 24, { fit: 'fill' }).greyscale().raw().toBuffer();
}
const meanAbsDiff = (a: Buffer, b: Buffer): number => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += Math.abs((a[i] ?? 0) - (b[i] ?? 0));
  return s / a.length;
};

t.test('every EXIF orientation gives upright thumbnails', async (t) => {
  const dir = t.testdir();
  const thumbOnly: Entitlements = { original: true, webp: true, avif: false };
  for (const kind of ['landscape', 'portrait'] as const) {
    let reference: Buffer | undefined;
    for (let o = 1; o <= 8; o++) {
      const outDir = path.join(dir, `${kind}_${o}`);
      const { probe, out } = await render(fixture(`orientation/${kind}_${o}.jpg`), outDir, thumbOnly);
      t.equal(probe.orientation, o, `${kind}_${o}: orientation read`);
      t.equal(probe.width > probe.height, kind === 'landscape', `${kind}_${o}: probe reports oriented size`);
      for (const r of out) {
        const meta = await sharp(path.join(outDir, r.spec.relPath)).metadata();
        t.equal(
          meta.width > meta.height,
          kind === 'landscape',
          `${kind}_${o} ${r.spec.variantType}: ${meta.width}x${meta.height}`,
        );
        t.equal(meta.orientation, undefined, `${kind}_${o} ${r.spec.variantType}: no orientation tag left`);
      }
      const medium = out.find((r) => r.spec.variantType === 'medium_jpeg');
      t.ok(medium, 'medium jpeg made');
      if (!medium) continue;
      const fp = await fingerprint(path.join(outDir, medium.spec.relPath));
      reference ??= fp;
      // the same scene after rotation: only the digit label differs. A wrong rotation or a missing
      // flip differs by far more (measured: ≥ 40).
      t.ok(
        meanAbsDiff(fp, reference) < 15,
        `${kind}_${o} looks like ${kind}_1 (diff ${meanAbsDiff(fp, reference).toFixed(1)})`,
      );
    }
  }
});

t.test('camera JPEG, full set: formats, sizes, hashes, no temp files, progress per output', async (t) => {
  const dir = t.testdir();
  const { out, progress, specs } = await render(fixture('mobile/jolla.jpg'), dir);
  t.equal(out.length, specs.length);
  t.equal(progress, specs.length, 'onProgress once per output');
  await checkOutputs(t, dir, out);
  const dims = Object.fromEntries(out.map((r) => [r.spec.variantType, `${r.width}x${r.height}`]));
  t.same(dims, {
    small_jpeg: '200x150',
    small_webp: '200x150',
    small_avif: '200x150',
    medium_jpeg: '500x375',
    medium_webp: '500x375',
    medium_avif: '500x375',
    webp: '3264x2448',
    avif: '3264x2448',
  });
});

t.test(
  'full-size AVIF above the pixel budget: downscaled to fit, WebP and thumbnails unchanged',
  async (t) => {
    const dir = t.testdir();
    // jolla.jpg is 3264×2448 (8.0 MP); a 2 MP budget gives the largest 4:3 size within it
    const { out } = await render(fixture('mobile/jolla.jpg'), dir, ALL, { avifMaxPixels: 2_000_000 });
    await checkOutputs(t, dir, out); // the reported width and height are the file's
    const dims = Object.fromEntries(out.map((r) => [r.spec.variantType, `${r.width}x${r.height}`]));
    t.same(dims, {
      small_jpeg: '200x150',
      small_webp: '200x150',
      small_avif: '200x150',
      medium_jpeg: '500x375',
      medium_webp: '500x375',
      medium_avif: '500x375',
      webp: '3264x2448',
      avif: '1632x1224',
    });
    const avif = out.find((r) => r.spec.variantType === 'avif');
    t.equal(avif?.spec.size, 'full', 'still the full-size AVIF');
    t.ok(avif && avif.width * avif.height <= 2_000_000, 'within the budget');
    t.ok(
      avif && (avif.width + 1) * Math.round((2448 * (avif.width + 1)) / 3264) > 2_000_000,
      'as large as fits',
    );

    // a budget the image fits in, and no WebP (the AVIF is then the largest output of a shrunk decode)
    const below = await render(fixture('mobile/jolla.jpg'), path.join(dir, 'below'), ALL, {
      avifMaxPixels: 3264 * 2448,
    });
    t.equal(below.out.find((r) => r.spec.variantType === 'avif')?.width, 3264, 'at the budget: full size');
    const noWebp = await render(
      fixture('mobile/jolla.jpg'),
      path.join(dir, 'nowebp'),
      { original: true, webp: false, avif: true },
      { avifMaxPixels: 2_000_000 },
    );
    await checkOutputs(t, path.join(dir, 'nowebp'), noWebp.out);
    t.same(
      noWebp.out
        .filter((r) => r.spec.size !== 'small')
        .map((r) => `${r.spec.variantType} ${r.width}x${r.height}`),
      ['medium_jpeg 500x375', 'medium_avif 500x375', 'avif 1632x1224'],
    );
  },
);

t.test('process-wide pixel budget: renders above it take turns, and all complete', async (t) => {
  const dir = t.testdir();
  configureMedia({ renderPixelBudget: 1_000_000 }); // jolla.jpg (8 MP) is above it: renders alone
  t.teardown(() => configureMedia({ renderPixelBudget: DEFAULT_RENDER_PIXEL_BUDGET }));
  const src = fixture('mobile/jolla.jpg');
  const probe = await probeImage(src);
  const specs = planVariants(
    { imageId: ID, datePath: DATE, format: probe.format, width: probe.width, height: probe.height },
    ALL,
  );
  const events: string[] = [];
  const one = (name: string) =>
    renderVariants(src, probe, specs, (rel) => path.join(dir, name, rel), {
      avifEngine: 'sharp',
      onProgress: () => events.push(name),
    });
  // a thumbnail-only render weighs its shrunk decode only, but still queues behind (FIFO)
  const thumbs = specs.filter((s) => s.size !== 'full');
  const [a, b, c] = await Promise.all([
    one('a'),
    one('b'),
    renderVariants(src, probe, thumbs, (rel) => path.join(dir, 'c', rel), {
      avifEngine: 'sharp',
      onProgress: () => events.push('c'),
    }),
  ]);
  t.same(
    events,
    [...specs.map(() => 'a'), ...specs.map(() => 'b'), ...thumbs.map(() => 'c')],
    'one after the other, in call order',
  );
  for (const [name, out] of [
    ['a', a],
    ['b', b],
    ['c', c],
  ] as const)
    await checkOutputs(t, path.join(dir, name), out);
  t.same(
    a.map((r) => `${r.width}x${r.height}`),
    b.map((r) => `${r.width}x${r.height}`),
  );
});

t.test('thumbnail-only plans decode shrunk but give the same sizes as the full set', async (t) => {
  const dir = t.testdir();
  // 1001×667: 500 × 333.17 and 200 × 133.27, where a shrunk decode could round differently
  const src = path.join(dir, 'odd.jpg');
  await sharp(fixture('mobile/jolla.jpg')).resize(1001, 667, { fit: 'fill' }).jpeg().toFile(src);
  const full = await render(src, path.join(dir, 'full'));
  const free = await render(src, path.join(dir, 'free'), { original: true, webp: false, avif: false });
  const dims = (out: RenderedVariant[]) =>
    Object.fromEntries(
      out.filter((r) => r.spec.format === 'jpeg').map((r) => [r.spec.variantType, `${r.width}x${r.height}`]),
    );
  t.same(dims(free.out), { small_jpeg: '200x133', medium_jpeg: '500x333' });
  t.same(dims(full.out), dims(free.out));
  await checkOutputs(t, path.join(dir, 'free'), free.out);
});

t.test('thumbnails are never enlarged', async (t) => {
  const dir = t.testdir({
    'small.png': await sharp({ create: { width: 300, height: 120, channels: 3, background: '#3080c0' } })
      .png()
      .toBuffer(),
  });
  const { out } = await render(path.join(dir, 'small.png'), path.join(dir, 'out'));
  const dims = Object.fromEntries(out.map((r) => [r.spec.variantType, [r.width, r.height]]));
  t.same(dims.small_png, [200, 80], 'small: 200 wide');
  t.same(dims.medium_png, [300, 120], 'medium: keeps 300 wide');
  t.same(dims.medium_webp, [300, 120]);
  t.same(dims.webp, [300, 120], 'full size');
  await checkOutputs(t, path.join(dir, 'out'), out);
});

t.test('GPS photo: no EXIF, GPS, XMP or ICC left in any variant', async (t) => {
  const dir = t.testdir();
  const src = fixture('gps/DSCN0010.jpg');
  t.ok((await sharp(src).metadata()).exif, 'the original has EXIF');
  const { out } = await render(src, dir);
  t.equal(out.length, 8);
  for (const r of out) {
    const buf = await readFile(path.join(dir, r.spec.relPath));
    const meta = await sharp(buf).metadata();
    t.equal(meta.exif, undefined, `${r.spec.variantType}: no EXIF`);
    t.equal(meta.xmp, undefined, `${r.spec.variantType}: no XMP`);
    t.equal(meta.icc, undefined, `${r.spec.variantType}: untagged sRGB`);
    t.equal(buf.indexOf('NIKON'), -1, `${r.spec.variantType}: no camera strings`);
    t.equal(buf.indexOf('WGS-84'), -1, `${r.spec.variantType}: no GPS strings`);
  }
});

t.test('wide-gamut input is converted to sRGB, not just untagged', async (t) => {
  // sRGB red stored as Display P3 values with a P3 profile
  const p3 = await sharp({
    create: { width: 120, height: 80, channels: 3, background: { r: 255, g: 0, b: 0 } },
  })
    .withIccProfile('p3')
    .jpeg({ quality: 100 })
    .toBuffer();
  const dir = t.testdir({ 'p3.jpg': p3 });
  const stored = await sharp(p3, { ignoreIcc: true }).raw().toBuffer();
  t.ok((stored[1] ?? 0) > 30, `the file holds P3 numbers (${stored.subarray(0, 3).join(',')})`);
  const { out } = await render(path.join(dir, 'p3.jpg'), path.join(dir, 'out'), {
    original: true,
    webp: false,
    avif: false,
  });
  const small = out[0];
  t.ok(small);
  if (!small) return;
  const colour = await bandColour(path.join(dir, 'out', small.spec.relPath), 0, 1);
  t.ok(near(colour, [255, 0, 0], 8), `converted back to sRGB red: ${colour.join(',')}`);
});

t.test('BMP input: 24-bit bottom-up, 24-bit top-down, 32-bit, 8-bit palette', async (t) => {
  // top half red, bottom half blue: a decoder that gets the row order wrong swaps them
  const pixel = (_x: number, y: number): [number, number, number, number] =>
    y < 30 ? [220, 20, 20, 255] : [20, 20, 220, 255];
  const files = {
    'bu24.bmp': encodeBmp(241, 60, 24, pixel),
    'td24.bmp': encodeBmp(241, 60, 24, pixel, { topDown: true }),
    'x32.bmp': encodeBmp(241, 60, 32, pixel),
    'pal8.bmp': encodeBmp(241, 60, 8, pixel),
  };
  const dir = t.testdir(files);
  t.same(parseBmpHeader(files['td24.bmp']), {
    width: 241,
    height: 60,
    bitsPerPixel: 24,
    compression: 0,
    topDown: true,
  });
  for (const name of Object.keys(files)) {
    const outDir = path.join(dir, `out-${name}`);
    const { probe, out } = await render(path.join(dir, name), outDir);
    t.same([probe.format, probe.width, probe.height], ['bmp', 241, 60], `${name}: probed`);
    t.same(
      out.map((r) => r.spec.variantType),
      ['small_png', 'small_webp', 'small_avif', 'medium_png', 'medium_webp', 'medium_avif', 'webp', 'avif'],
      `${name}: PNG as the original format`,
    );
    await checkOutputs(t, outDir, out);
    for (const r of out) {
      const file = path.join(outDir, r.spec.relPath);
      const top = await bandColour(file, 0.1, 0.4);
      const bottom = await bandColour(file, 0.6, 0.9);
      t.ok(
        near(top, [220, 20, 20], 25) && near(bottom, [20, 20, 220], 25),
        `${name} ${r.spec.variantType}: red over blue (${top} / ${bottom})`,
      );
    }
    const png = out.find((r) => r.spec.variantType === 'small_png');
    if (png)
      t.equal(
        (await sharp(path.join(outDir, png.spec.relPath)).metadata()).hasAlpha,
        false,
        `${name}: opaque BMP gives an RGB PNG`,
      );
  }
});

t.test('BMP that is not a BMP rejects with a readable error', async (t) => {
  const bad = Buffer.from(encodeBmp(10, 10, 24, () => [0, 0, 0, 255]));
  bad.writeUInt16LE(7, 28); // 7 bits per pixel
  const dir = t.testdir({ 'bad.bmp': bad });
  await t.rejects(probeImage(path.join(dir, 'bad.bmp')), /invalid BMP/);
});

t.test('animated GIF: animated GIF and WebP thumbnails, still AVIF, no full size', async (t) => {
  const w = 640;
  const h = 400;
  const n = 5;
  const frames = Buffer.alloc(w * h * n * 4);
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < w * h; i++) {
      const o = (p * w * h + i) * 4;
      frames[o] = p * 50;
      frames[o + 1] = 255 - p * 50;
      frames[o + 2] = (i % w) / 3;
      frames[o + 3] = 255;
    }
  }
  const gif = await sharp(frames, { raw: { width: w, height: h * n, channels: 4, pageHeight: h } })
    .gif({ delay: [100, 200, 100, 200, 500], loop: 0 })
    .toBuffer();
  const dir = t.testdir({ 'anim.gif': gif });
  const { probe, out } = await render(path.join(dir, 'anim.gif'), path.join(dir, 'out'));
  t.same([probe.format, probe.width, probe.height, probe.pages], ['gif', 640, 400, 5]);
  t.same(
    out.map((r) => r.spec.variantType),
    ['small_gif', 'small_webp', 'small_avif', 'medium_gif', 'medium_webp', 'medium_avif'],
  );
  await checkOutputs(t, path.join(dir, 'out'), out);
  for (const r of out) {
    const meta = await sharp(path.join(dir, 'out', r.spec.relPath), { animated: true }).metadata();
    const expectedWidth = r.spec.size === 'small' ? 200 : 500;
    t.equal(meta.width, expectedWidth, `${r.spec.variantType}: ${expectedWidth} wide`);
    if (r.spec.format === 'avif') {
      t.equal(meta.pages ?? 1, 1, `${r.spec.variantType}: first frame`);
    } else {
      t.equal(meta.pages, 5, `${r.spec.variantType}: 5 frames`);
      t.equal(meta.pageHeight, r.height, `${r.spec.variantType}: frame height ${r.height}`);
      t.same(meta.delay, [100, 200, 100, 200, 500], `${r.spec.variantType}: frame delays kept`);
    }
  }
});

t.test('PNG with alpha, WebP and AVIF inputs', async (t) => {
  const alphaPng = await sharp({
    create: { width: 800, height: 600, channels: 4, background: { r: 0, g: 128, b: 255, alpha: 0.5 } },
  })
    .png()
    .toBuffer();
  const photo = await sharp(fixture('Canon_40D.jpg')).resize(640, 426, { fit: 'fill' }).toBuffer();
  const dir = t.testdir({
    'alpha.png': alphaPng,
    'photo.webp': await sharp(photo).webp().toBuffer(),
    'photo.avif': await sharp(photo).avif({ effort: 0 }).toBuffer(),
  });

  const png = await render(path.join(dir, 'alpha.png'), path.join(dir, 'png'));
  t.same(
    png.out.map((r) => r.spec.variantType),
    ['small_png', 'small_webp', 'small_avif', 'medium_png', 'medium_webp', 'medium_avif', 'webp', 'avif'],
  );
  await checkOutputs(t, path.join(dir, 'png'), png.out);
  for (const r of png.out) {
    t.equal(
      (await sharp(path.join(dir, 'png', r.spec.relPath)).metadata()).hasAlpha,
      true,
      `${r.spec.variantType}: alpha kept`,
    );
  }

  const webp = await render(path.join(dir, 'photo.webp'), path.join(dir, 'webp'));
  t.equal(webp.probe.format, 'webp');
  t.same(
    webp.out.map((r) => r.spec.variantType),
    ['small_webp', 'small_avif', 'medium_webp', 'medium_avif', 'avif'],
  );
  await checkOutputs(t, path.join(dir, 'webp'), webp.out);

  const avif = await render(path.join(dir, 'photo.avif'), path.join(dir, 'avif'));
  t.same(
    [avif.probe.format, avif.probe.width, avif.probe.height],
    ['avif', 640, 426],
    'dimensions read from the AVIF',
  );
  t.same(
    avif.out.map((r) => r.spec.variantType),
    ['small_avif', 'small_webp', 'medium_avif', 'medium_webp', 'webp'],
    'no full-size AVIF',
  );
  await checkOutputs(t, path.join(dir, 'avif'), avif.out);
});

t.test('16-bit PNG, greyscale and CMYK JPEG decode to 8-bit sRGB', async (t) => {
  const dir = t.testdir({
    'deep.png': await sharp({ create: { width: 300, height: 200, channels: 3, background: '#4080c0' } })
      .toColourspace('rgb16')
      .png()
      .toBuffer(),
    'grey.jpg': await sharp(fixture('Canon_40D.jpg')).greyscale().jpeg().toBuffer(),
    'cmyk.jpg': await sharp({
      create: { width: 120, height: 90, channels: 3, background: { r: 200, g: 30, b: 30 } },
    })
      .toColourspace('cmyk')
      .jpeg()
      .toBuffer(),
  });
  t.equal((await sharp(path.join(dir, 'cmyk.jpg')).metadata()).space, 'cmyk', 'input really is CMYK');
  t.equal((await sharp(path.join(dir, 'deep.png')).metadata()).depth, 'ushort', 'input really is 16 bit');
  for (const name of ['deep.png', 'grey.jpg', 'cmyk.jpg']) {
    const outDir = path.join(dir, `out-${name}`);
    const { out } = await render(path.join(dir, name), outDir);
    await checkOutputs(t, outDir, out);
    for (const r of out) {
      const meta = await sharp(path.join(outDir, r.spec.relPath)).metadata();
      t.ok(meta.depth === 'uchar', `${name} ${r.spec.variantType}: 8 bit`);
    }
  }
  const cmykOut = path.join(dir, 'out-cmyk.jpg', `variants/${DATE}/${ID}_small.jpg`);
  const colour = await bandColour(cmykOut, 0, 1);
  t.ok(near(colour, [200, 30, 30], 30), `CMYK red stays red: ${colour.join(',')}`);
});

t.test('broken JPEGs render or reject with an Error, never hang, never leave files', async (t) => {
  const broken = [
    'corrupted.jpg',
    ...(await readdir(fixture('invalid'))).filter((f) => f.endsWith('.jpg')).map((f) => `invalid/${f}`),
  ];
  const dir = t.testdir();
  for (const name of broken) {
    const outDir = path.join(dir, name.replace('/', '_'));
    const started = Date.now();
    try {
      const { out } = await render(fixture(name), outDir);
      await checkOutputs(t, outDir, out);
      t.pass(`${name}: rendered ${out.length} variants`);
    } catch (err) {
      t.type(err, Error, `${name}: rejects with an Error`);
      t.match((err as Error).message, /\w{4,}/, `${name}: readable message: ${(err as Error).message}`);
      const left = await walk(outDir);
      t.same(left, [], `${name}: nothing written`);
    }
    t.ok(Date.now() - started < 30_000, `${name}: finished in ${Date.now() - started} ms`);
  }
});

t.test('not an image / unsupported: probe rejects with a readable error', async (t) => {
  const dir = t.testdir({ 'notes.txt': 'hello, not an image', 'empty.jpg': '' });
  await t.rejects(probeImage(path.join(dir, 'notes.txt')), /unreadable image|unsupported/);
  await t.rejects(probeImage(path.join(dir, 'empty.jpg')), Error);
});

t.test('pixel limit is enforced before decoding', async (t) => {
  const dir = t.testdir();
  await t.rejects(probeImage(fixture('mobile/jolla.jpg'), { pixelLimit: 1_000_000 }), /pixel limit/);
  const probe = await probeImage(fixture('mobile/jolla.jpg'));
  const specs = planVariants(
    { imageId: ID, datePath: DATE, format: 'jpeg', width: probe.width, height: probe.height },
    ALL,
  );
  await t.rejects(
    renderVariants(fixture('mobile/jolla.jpg'), probe, specs, (rel) => path.join(dir, rel), {
      avifEngine: 'sharp',
      pixelLimit: 1_000_000,
    }),
    /cannot decode/,
  );
  t.same(await walk(dir), [], 'nothing written');
});

t.test('redelivery rewrites the same paths in place', async (t) => {
  const dir = t.testdir();
  const first = await render(fixture('Canon_40D.jpg'), dir, { original: true, webp: true, avif: false });
  const before = await stat(path.join(dir, first.out[0]?.spec.relPath ?? ''));
  const second = await render(fixture('Canon_40D.jpg'), dir, { original: true, webp: true, avif: false });
  t.same(
    second.out.map((r) => r.spec.relPath),
    first.out.map((r) => r.spec.relPath),
  );
  t.same(
    second.out.map((r) => r.sha256),
    first.out.map((r) => r.sha256),
    'same bytes',
  );
  t.ok(before.isFile());
  await checkOutputs(t, dir, second.out);
  for (const parallel of [1, 3]) {
    const again = await render(fixture('Canon_40D.jpg'), path.join(dir, `p${parallel}`), ALL, { parallel });
    const reference = await render(fixture('Canon_40D.jpg'), path.join(dir, `ref${parallel}`), ALL);
    t.same(
      again.out.map((r) => [r.spec.variantType, r.sha256]),
      reference.out.map((r) => [r.spec.variantType, r.sha256]),
      `parallel ${parallel}: same files, same order`,
    );
    t.equal(again.progress, again.specs.length, `parallel ${parallel}: progress per output`);
  }
});

const engines = await detectAvifEngines();
const noSvt = engines.ffmpeg ? false : 'ffmpeg with libsvtav1 is not installed';
t.test(
  'AVIF through ffmpeg + SVT-AV1 (falls back to sharp where SVT cannot encode)',
  { skip: noSvt },
  async (t) => {
    const dir = t.testdir({
      // 333×211: odd sizes, which SVT-AV1 refuses for 4:2:0
      'odd.png': await sharp(fixture('Canon_40D.jpg')).resize(333, 211, { fit: 'fill' }).png().toBuffer(),
    });
    const avifOnly: Entitlements = { original: false, webp: false, avif: true };
    const jolla = await render(fixture('mobile/jolla.jpg'), path.join(dir, 'jolla'), avifOnly, {
      avifEngine: 'ffmpeg',
    });
    t.same(
      jolla.out.map((r) => [r.spec.variantType, r.encoder, `${r.width}x${r.height}`]),
      [
        ['small_avif', 'ffmpeg', '200x150'],
        ['medium_avif', 'sharp', '500x375'], // odd height: SVT-AV1 cannot, sharp does
        ['avif', 'ffmpeg', '3264x2448'],
      ],
    );
    await checkOutputs(t, path.join(dir, 'jolla'), jolla.out);
    // colours survive the RGB → YUV → RGB round trip (matrix and range tagged correctly)
    const jpegColour = await bandColour(fixture('mobile/jolla.jpg'), 0.2, 0.8);
    const avifColour = await bandColour(path.join(dir, 'jolla', jolla.out[2]?.spec.relPath ?? ''), 0.2, 0.8);
    t.ok(near(avifColour, jpegColour, 4), `mean colour ${avifColour} vs ${jpegColour}`);

    const odd = await render(path.join(dir, 'odd.png'), path.join(dir, 'odd'), avifOnly, {
      avifEngine: 'ffmpeg',
    });
    const byType = Object.fromEntries(odd.out.map((r) => [r.spec.variantType, r.encoder]));
    t.equal(byType.avif, 'sharp', 'odd full size → sharp');
    await checkOutputs(t, path.join(dir, 'odd'), odd.out);
  },
);

t.test('a truncated BMP: ffmpeg fails, the render rejects, nothing is written', async (t) => {
  // a file that ffmpeg cannot decode as BMP: header says BMP, body is garbage
  const bmp = encodeBmp(100, 100, 24, () => [1, 2, 3, 255]).subarray(0, 200);
  const dir = t.testdir({ 'trunc.bmp': bmp });
  const probe = await probeImage(path.join(dir, 'trunc.bmp'));
  const specs = planVariants(
    { imageId: ID, datePath: DATE, format: 'bmp', width: probe.width, height: probe.height },
    ALL,
  );
  await t.rejects(
    renderVariants(path.join(dir, 'trunc.bmp'), probe, specs, (rel) => path.join(dir, 'out', rel), {
      avifEngine: 'sharp',
    }),
    /cannot decode bmp image/,
  );
  t.same(await walk(path.join(dir, 'out')), []);
});
