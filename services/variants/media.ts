// The media module: the only place that decodes and encodes pixels (sharp, and ffmpeg as a child
// process). Everything else in the variants service decides *what* to make (plan.ts); this makes it.
//
// Decode once, derive all: the original is decoded a single time (EXIF auto-rotated, converted to
// sRGB, 8 bit) into a raw pixel buffer, and every variant is derived from that buffer. When no
// output at the original's size is wanted the decode itself is shrunk (JPEG/WebP shrink-on-load) to
// the largest output width (a thumbnail, or a full-size AVIF the plan capped). Measured in
// bench/variants.ts against sharp's clone(), which re-decodes the file per output: see
// bench/RESULTS-variants.md. Memory: see DEFAULT_RENDER_PIXEL_BUDGET.
//
// Colour: every variant is untagged sRGB. The decode converts any embedded ICC profile to sRGB
// (sharp's default), and no profile is attached on output: an untagged image is sRGB to every
// browser, and attaching the sRGB profile (withIccProfile('srgb')) would add ~500 bytes to each
// file (a 200 px WebP is often only a few KB) plus a colour transform per output. keepIccProfile()
// cannot apply to a raw buffer and would leave wide-gamut files unconverted. Trade-off: wide-gamut
// (Display P3) colours are clipped to sRGB. All metadata (EXIF, GPS, XMP, IPTC) is dropped, because
// a raw buffer carries none.
//
// BMP: sharp/libvips cannot read BMP, so ffmpeg decodes it to raw RGBA (`-f rawvideo -pix_fmt rgba`),
// which sharp takes as raw input. ffmpeg's BMP decoder covers every variant (1/4/8-bit palette,
// RLE4/RLE8, 16/24/32-bit, bitfields, top-down); dimensions come from our own header parser so the
// pixel limit is enforced before anything is decoded.
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import path from 'node:path';
import Ffmpeg from 'fluent-ffmpeg';
import sharp from 'sharp';
import type { Metadata, Sharp, SharpOptions } from 'sharp';
import { outputSize } from './plan.js';
import type { OutputFormat, SourceFormat, VariantSpec } from './plan.js';

// Each image is different, so libvips' operation cache would only pin memory (up to 50 MB by default).
sharp.cache(false);

export type AvifEngine = 'sharp' | 'ffmpeg';

/** sharp's own default (0x3FFF × 0x3FFF); callers normally pass the configured limit. */
export const DEFAULT_PIXEL_LIMIT = 268_402_689;
/** Per-operation timeout: a pathological file must fail, never hang a worker slot. */
export const DEFAULT_TIMEOUT_SECONDS = 120;
/** Outputs encoded at once. libwebp encodes on a single thread, so a second output in flight keeps
 * another core busy (the full-size WebP and AVIF overlap): ~15 % less wall time per image on 2 cores,
 * for one more encoder's memory. Large images (above the pixel budget below) still encode their
 * thumbnails two at once, but their full-size outputs one at a time. */
export const DEFAULT_PARALLEL_OUTPUTS = 2;
/**
 * Full-size pixels rendered at once in this process, summed over concurrent renderVariants calls
 * (the worker runs job_queue_worker_count images at once, plus the reprocessor). Memory of a render
 * is roughly proportional to the pixels it decodes: the raw buffer (3-4 B/px), the full-size WebP
 * encoder (~5 B/px) and above all the AV1 encoder (~19 B/px, whose input the plan caps at
 * avif_max_megapixels, default 24). A render waits (before decoding, so a waiting image holds no
 * pixels) until its decoded pixels fit in the budget; an image larger than the budget renders alone.
 * With 24 MP: two 12 MP phone photos still render side by side, two 24 MP or 50 MP images take turns,
 * so a worker process stays under 1 GiB RSS (bench/memory.ts, 50 MP JPEG: 817 MiB for one, 861 MiB
 * for two queued at once; 1483 and 2780 MiB before the cap and this budget). An image above the budget also encodes
 * its full-size outputs one at a time (the full-size WebP of a 50 MP image would otherwise overlap the
 * AVIF: +~250 MiB). Thumbnail-only renders decode shrunk and weigh almost nothing.
 */
export const DEFAULT_RENDER_PIXEL_BUDGET = 24_000_000;

export interface EncoderSettings {
  webp: { quality: number; effort: number };
  jpeg: { quality: number };
  png: { compressionLevel: number };
  avifSharp: { quality: number; effort: number; chromaSubsampling: '4:2:0' | '4:4:4' };
  avifSvt: { preset: number; crf: number };
}

/** Encoder settings. Chosen with bench/variants.ts (SSIM vs the original ≥ 0.95 at the lowest cost). */
export const ENCODER_SETTINGS: Readonly<EncoderSettings> = Object.freeze<EncoderSettings>({
  /** WebP quality 85 for full size and thumbnails (the issue's number); effort 4 = libwebp's default. */
  webp: { quality: 85, effort: 4 },
  /** JPEG thumbnails of JPEG originals. */
  jpeg: { quality: 90 },
  /** PNG thumbnails of PNG and BMP originals: zlib level 6, libpng's default speed/size balance. */
  png: { compressionLevel: 6 },
  /** sharp (libheif + aom): effort 1 (aom speed 8) is ~3× faster than effort 2 on an 8 MP photo at the
   * same bytes and SSIM, and far better than effort 0 on graphics; sharp's default effort 4 takes ~15×
   * as long for ~2 % fewer bytes. 4:2:0 like the WebP and JPEG outputs (sharp's AVIF default is 4:4:4). */
  avifSharp: { quality: 50, effort: 1, chromaSubsampling: '4:2:0' },
  /** ffmpeg + SVT-AV1: preset 10 is SVT's fast end; crf 32 gives about the SSIM of sharp q50 with
   * ~20 % fewer bytes on the benchmark photo. */
  avifSvt: { preset: 10, crf: 32 },
});

/**
 * Default AVIF engine, chosen from the benchmark (bench/RESULTS-variants.md): sharp is in-process,
 * needs no extra binary, takes any size and alpha, and its whole render of an 8 MP photo peaks around
 * 300-350 MB RSS, while the SVT-AV1 child alone peaks near 1 GB for the same photo, and sharp (effort 1)
 * is 2-3× faster on the full size. SVT-AV1 makes ~20 % smaller full-size AVIFs at equal SSIM, so
 * 'ffmpeg' is the choice where bytes matter more than memory and time.
 */
export const DEFAULT_AVIF_ENGINE: AvifEngine = 'sharp';

export interface ProbeResult {
  format: SourceFormat;
  /** width and height AFTER EXIF auto-rotation (per frame for animations) */
  width: number;
  height: number;
  orientation: number | null;
  /** frames: > 1 for animated GIF/WebP; probeImage always fills it, absent means 1 */
  pages?: number;
  hasAlpha?: boolean;
}

export interface RenderedVariant {
  spec: VariantSpec;
  width: number;
  height: number;
  bytes: number;
  sha256: string;
  /** who encoded it: AVIF may fall back from ffmpeg to sharp (odd or < 64 px sizes, alpha) */
  encoder: 'sharp' | 'ffmpeg';
}

export interface RenderOptions {
  avifEngine: AvifEngine;
  pixelLimit?: number;
  timeoutSeconds?: number;
  /** called after each written variant, so the caller can send JetStream in-progress acks */
  onProgress?: () => void;
  /** outputs encoded at once (default DEFAULT_PARALLEL_OUTPUTS); 1 = lowest peak memory */
  parallel?: number;
  /** tuning and benchmarks only: overrides ENCODER_SETTINGS per format */
  encoders?: Partial<EncoderSettings>;
}

export interface MediaConfig {
  /** libvips threads per operation. sharp picks 1 on glibc without jemalloc (memory fragmentation);
   * with DEFAULT_PARALLEL_OUTPUTS outputs in flight that is also the fastest on 2 cores (measured in
   * bench/variants.ts), so the worker need not change it. */
  concurrency?: number;
  ffmpegPath?: string;
  /** full-size pixels rendered at once in this process (default DEFAULT_RENDER_PIXEL_BUDGET) */
  renderPixelBudget?: number;
}

let ffmpegPath = 'ffmpeg';

/** Process-wide settings, applied once at start-up by the worker. */
export function configureMedia(config: MediaConfig): void {
  if (config.concurrency !== undefined) sharp.concurrency(config.concurrency);
  if (config.ffmpegPath !== undefined) {
    ffmpegPath = config.ffmpegPath;
    enginesPromise = undefined;
  }
  if (config.renderPixelBudget !== undefined) renderSlots.resize(config.renderPixelBudget);
}

/** A FIFO weighted semaphore: a large waiter is never overtaken (and starved) by small ones. */
class Semaphore {
  private used = 0;
  private readonly waiting: { weight: number; wake: () => void }[] = [];
  constructor(private capacity: number) {}

  /** Waits until `weight` (capped at the capacity, so an oversized job runs alone) fits; resolves
   * with the release function. */
  async acquire(weight: number): Promise<() => void> {
    const w = Math.max(0, Math.min(weight, this.capacity));
    if (this.waiting.length > 0 || this.used + w > this.capacity) {
      await new Promise<void>((wake) => this.waiting.push({ weight: w, wake }));
    } else {
      this.used += w;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.used -= w;
      this.drain();
    };
  }

  get limit(): number {
    return this.capacity;
  }

  resize(capacity: number): void {
    this.capacity = capacity > 0 ? capacity : Number.POSITIVE_INFINITY;
    this.drain();
  }

  private drain(): void {
    for (let head = this.waiting[0]; head; head = this.waiting[0]) {
      // a waiter queued under a larger capacity still gets in once it runs alone
      if (this.used > 0 && this.used + head.weight > this.capacity) return;
      this.waiting.shift();
      this.used += head.weight;
      head.wake();
    }
  }
}

const renderSlots = new Semaphore(DEFAULT_RENDER_PIXEL_BUDGET);

// ---------------------------------------------------------------------------------------------
// Probe

/** Reads the header only: format, oriented dimensions, frames. Rejects unsupported or too large files. */
export async function probeImage(absPath: string, opts: { pixelLimit?: number } = {}): Promise<ProbeResult> {
  const limit = opts.pixelLimit ?? DEFAULT_PIXEL_LIMIT;
  const head = await readHead(absPath, 64);
  if (head.length >= 2 && head[0] === 0x42 && head[1] === 0x4d) {
    const bmp = parseBmpHeader(head);
    checkPixelLimit(bmp.width, bmp.height, 1, limit);
    return {
      format: 'bmp',
      width: bmp.width,
      height: bmp.height,
      orientation: null,
      pages: 1,
      hasAlpha: bmp.bitsPerPixel === 32,
    };
  }
  let meta: Metadata;
  try {
    meta = await sharp(absPath, { limitInputPixels: limit }).metadata();
  } catch (err) {
    throw new Error(`unreadable image: ${messageOf(err)}`, { cause: err });
  }
  const format = sourceFormatOf(meta);
  const pages = format === 'gif' || format === 'webp' ? Math.max(1, meta.pages ?? 1) : 1;
  const pageHeight = pages > 1 ? (meta.pageHeight ?? meta.height) : meta.height;
  const oriented = pages > 1 ? { width: meta.width, height: pageHeight } : meta.autoOrient;
  if (!(oriented.width > 0 && oriented.height > 0)) throw new Error('unreadable image: no dimensions');
  checkPixelLimit(oriented.width, oriented.height, 1, limit);
  return {
    format,
    width: oriented.width,
    height: oriented.height,
    orientation: meta.orientation ?? null,
    pages,
    hasAlpha: meta.hasAlpha,
  };
}

function sourceFormatOf(meta: Metadata): SourceFormat {
  switch (meta.format) {
    case 'jpeg':
    case 'png':
    case 'gif':
    case 'webp':
      return meta.format;
    case 'heif':
      if (meta.compression === 'av1') return 'avif';
      throw new Error(`unsupported image format: HEIF with ${meta.compression ?? 'unknown'} compression`);
    default:
      throw new Error(`unsupported image format: ${meta.format}`);
  }
}

function checkPixelLimit(width: number, height: number, pages: number, limit: number): void {
  if (limit > 0 && width * height * pages > limit) {
    throw new Error(
      `image too large: ${width}x${height}${pages > 1 ? `x${pages} frames` : ''} exceeds the pixel limit of ${limit}`,
    );
  }
}

export interface BmpHeader {
  width: number;
  height: number;
  bitsPerPixel: number;
  compression: number;
  topDown: boolean;
}

/** Parses a BMP file header (BITMAPCOREHEADER or BITMAPINFOHEADER and its successors). Pure. */
export function parseBmpHeader(head: Uint8Array): BmpHeader {
  const buf = Buffer.from(head.buffer, head.byteOffset, head.byteLength);
  if (buf.length < 26 || buf.toString('latin1', 0, 2) !== 'BM') throw new Error('invalid BMP: bad signature');
  const dibSize = buf.readUInt32LE(14);
  let width: number;
  let rawHeight: number;
  let bitsPerPixel: number;
  let compression = 0;
  if (dibSize === 12) {
    width = buf.readUInt16LE(18);
    rawHeight = buf.readUInt16LE(20);
    bitsPerPixel = buf.readUInt16LE(24);
  } else if (dibSize >= 40 && buf.length >= 34) {
    width = buf.readInt32LE(18);
    rawHeight = buf.readInt32LE(22);
    bitsPerPixel = buf.readUInt16LE(28);
    compression = buf.readUInt32LE(30);
  } else {
    throw new Error(`invalid BMP: unsupported header size ${dibSize}`);
  }
  const height = Math.abs(rawHeight);
  if (!(width > 0 && height > 0)) throw new Error(`invalid BMP: dimensions ${width}x${rawHeight}`);
  if (![1, 4, 8, 16, 24, 32].includes(bitsPerPixel))
    throw new Error(`invalid BMP: ${bitsPerPixel} bits per pixel`);
  return { width, height, bitsPerPixel, compression, topDown: rawHeight < 0 };
}

// ---------------------------------------------------------------------------------------------
// Render

/** Decoded pixels: `pages` frames of width × height stacked vertically, sRGB, 8 bit. */
interface Frames {
  data: Buffer;
  width: number;
  height: number;
  pages: number;
  channels: 3 | 4;
  /** 4 channels but every alpha is 255: alpha is dropped on output */
  opaque: boolean;
  delay?: number[];
  loop?: number;
}

/**
 * Renders every spec from one decode of `absSrc` and writes each file atomically (temp file in the
 * target directory, fsync, rename). Resolves with what was written, in spec order. Rejects with a
 * readable Error for corrupt or unsupported input; no partial or temp file is left behind.
 */
export async function renderVariants(
  absSrc: string,
  probe: ProbeResult,
  specs: VariantSpec[],
  toAbs: (relPath: string) => string,
  opts: RenderOptions,
): Promise<RenderedVariant[]> {
  if (specs.length === 0) return [];
  const thumbWidths = specs.filter((s) => s.size !== 'full').map((s) => s.maxWidth ?? 0);
  const decode = decodePlan(probe, specs, opts.pixelLimit ?? DEFAULT_PIXEL_LIMIT);
  // First await of the render, so concurrent calls queue in call order.
  const release = await renderSlots.acquire(decode.pixels);
  try {
    return await renderAll(absSrc, probe, specs, toAbs, opts, decode, Math.max(0, ...thumbWidths));
  } finally {
    release();
  }
}

async function renderAll(
  absSrc: string,
  probe: ProbeResult,
  specs: VariantSpec[],
  toAbs: (relPath: string) => string,
  opts: RenderOptions,
  decode: DecodePlan,
  largestThumb: number,
): Promise<RenderedVariant[]> {
  const ctx: Ctx = {
    origin: { width: probe.width, height: probe.height },
    enc: { ...ENCODER_SETTINGS, ...opts.encoders },
    limit: opts.pixelLimit ?? DEFAULT_PIXEL_LIMIT,
    timeoutSeconds: opts.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS,
    ffmpegAvif:
      opts.avifEngine === 'ffmpeg' && specs.some((s) => s.format === 'avif') && (await ffmpegAvifUsable()),
    largestThumb,
    sized: new Map(),
  };
  const source = await decodeOnce(absSrc, probe, decode, ctx);
  // a probe that disagrees with the pixels (not from probeImage, or not oriented) must not distort
  const ratio = source.width / source.height / (ctx.origin.width / ctx.origin.height);
  if (Math.abs(ratio - 1) > 0.02) ctx.origin = { width: source.width, height: source.height };
  const results: RenderedVariant[] = [];
  let next = 0;
  let failed = false;
  // A large image's full-size outputs take turns (see DEFAULT_RENDER_PIXEL_BUDGET): peak memory is
  // then one full-size encoder's, not the AVIF's plus the WebP's.
  const large = source.width * source.height * source.pages > renderSlots.limit;
  const fullSizeTurn = new Semaphore(1);
  const lane = async (): Promise<void> => {
    while (!failed && next < specs.length) {
      const i = next++;
      const spec = specs[i];
      if (!spec) continue;
      const turn = large && spec.size === 'full' ? await fullSizeTurn.acquire(1) : null;
      try {
        if (failed) return;
        results[i] = await renderOne(source, spec, toAbs(spec.relPath), ctx);
      } catch (err) {
        failed = true; // the other lane finishes its current output and stops
        throw err;
      } finally {
        turn?.();
      }
      opts.onProgress?.();
    }
  };
  const lanes = Math.max(1, Math.min(opts.parallel ?? DEFAULT_PARALLEL_OUTPUTS, specs.length));
  // allSettled: never resolve or reject while a lane is still writing a file
  const settled = await Promise.allSettled(Array.from({ length: lanes }, lane));
  const rejected = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected) throw rejected.reason instanceof Error ? rejected.reason : new Error(String(rejected.reason));
  return results;
}

interface Ctx {
  /** the original's oriented (per-frame) size: thumbnail sizes derive from it, not from a
   * shrink-on-load decode, so every plan gets the same thumbnail dimensions */
  origin: { width: number; height: number };
  enc: EncoderSettings;
  limit: number;
  timeoutSeconds: number;
  ffmpegAvif: boolean;
  /** the largest thumbnail's width: smaller thumbnails are derived from it, not from full-size pixels */
  largestThumb: number;
  /** resized frames already made, by `${animated}:${width}x${height}` */
  sized: Map<string, Promise<Frames>>;
}

interface DecodePlan {
  /** decode straight to this width (shrink-on-load), or null for the original's size */
  width: number | null;
  animated: boolean;
  /** pixels the decode holds (all frames): the render's weight in the process-wide pixel budget */
  pixels: number;
}

function decodePlan(probe: ProbeResult, specs: VariantSpec[], limit: number): DecodePlan {
  const needFull = specs.some((s) => s.maxWidth === null);
  // shrink-on-load: with no output at the original's size, decode straight to the largest output
  // width (a thumbnail, or a full-size AVIF capped by the plan)
  const width = needFull ? null : Math.max(0, ...specs.map((s) => s.maxWidth ?? 0));
  const pages = probe.pages ?? 1;
  const wantsAnimation =
    pages > 1 && specs.some((s) => s.format === 'gif' || (s.format === 'webp' && s.maxWidth !== null));
  const animated = wantsAnimation && probe.width * probe.height * pages <= limit;
  // BMP is decoded at full size by ffmpeg, then resized
  const size = probe.format === 'bmp' ? probe : outputSize(width, probe.width, probe.height);
  return { width, animated, pixels: size.width * size.height * (animated ? pages : 1) };
}

async function decodeOnce(absSrc: string, probe: ProbeResult, plan: DecodePlan, ctx: Ctx): Promise<Frames> {
  const decodeWidth = plan.width;
  try {
    if (probe.format === 'bmp') return await decodeBmp(absSrc, probe, decodeWidth, ctx);
    if (plan.animated) return await decodeAnimated(absSrc, probe, decodeWidth, ctx);
    return await decodeStill(absSrc, decodeWidth, ctx);
  } catch (err) {
    throw new Error(`cannot decode ${probe.format} image: ${messageOf(err)}`, { cause: err });
  }
}

function inputOptions(ctx: Ctx): SharpOptions {
  // failOn 'error': reject corrupt pixel data, tolerate benign warnings (e.g. extraneous bytes)
  // that many real camera files carry.
  return { failOn: 'error', limitInputPixels: ctx.limit, sequentialRead: true };
}

async function decodeStill(absSrc: string, decodeWidth: number | null, ctx: Ctx): Promise<Frames> {
  // no `pages` option: multi-page formats then load one page, and HEIF its primary image
  let img = sharp(absSrc, inputOptions(ctx)).autoOrient();
  if (decodeWidth !== null) img = img.resize({ width: decodeWidth, withoutEnlargement: true });
  return toFrames(img, ctx, 1);
}

async function decodeAnimated(
  absSrc: string,
  probe: ProbeResult,
  decodeWidth: number | null,
  ctx: Ctx,
): Promise<Frames> {
  // EXIF orientation is not applied to animations (GIF has none; animated WebP with it is rare).
  let img = sharp(absSrc, { ...inputOptions(ctx), animated: true });
  if (decodeWidth !== null && probe.width > decodeWidth) img = img.resize({ width: decodeWidth });
  const meta = await sharp(absSrc, { ...inputOptions(ctx), animated: true }).metadata();
  const frames = await toFrames(img, ctx, probe.pages ?? 1);
  return {
    ...frames,
    ...(meta.delay ? { delay: meta.delay } : {}),
    ...(meta.loop !== undefined ? { loop: meta.loop } : {}),
  };
}

async function toFrames(img: Sharp, ctx: Ctx, pages: number): Promise<Frames> {
  const { data, info } = await img
    .toColourspace('srgb')
    .timeout({ seconds: ctx.timeoutSeconds })
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3 && info.channels !== 4)
    throw new Error(`unexpected ${info.channels} channels after decode`);
  const realPages = info.pages ?? pages;
  const height = Math.round(info.height / realPages);
  return {
    data,
    width: info.width,
    height,
    pages: realPages,
    channels: info.channels,
    opaque: info.channels === 4 && isOpaque(data),
  };
}

async function decodeBmp(
  absSrc: string,
  probe: ProbeResult,
  decodeWidth: number | null,
  ctx: Ctx,
): Promise<Frames> {
  const expected = probe.width * probe.height * 4;
  const args = [
    // the BMP demuxer explicitly (no content probing), and `file:` so no path is read as a protocol
    ...['-hide_banner', '-loglevel', 'error', '-nostdin', '-f', 'bmp_pipe', '-i', `file:${absSrc}`],
    ...['-frames:v', '1', '-f', 'rawvideo', '-pix_fmt', 'rgba', 'pipe:1'],
  ];
  const res = await runProcess(ffmpegPath, args, {
    timeoutMs: ctx.timeoutSeconds * 1000,
    maxStdout: expected,
  }).catch((err: unknown) => {
    if (isErrnoException(err) && err.code === 'ENOENT')
      throw new Error('BMP decoding needs ffmpeg, which was not found');
    throw err;
  });
  if (res.code !== 0 || res.stdout.length !== expected) {
    throw new Error(`ffmpeg could not decode the BMP${res.stderr ? `: ${res.stderr.trim()}` : ''}`);
  }
  const full: Frames = {
    data: res.stdout,
    width: probe.width,
    height: probe.height,
    pages: 1,
    channels: 4,
    opaque: isOpaque(res.stdout),
  };
  if (decodeWidth === null || probe.width <= decodeWidth) return full;
  return resizeFrames(full, outputSize(decodeWidth, full.width, full.height), ctx);
}

function isOpaque(rgba: Buffer): boolean {
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] !== 255) return false;
  return true;
}

/** Resizes every frame to exactly `size` (sharp cannot resize raw multi-page input as pages). */
async function resizeFrames(src: Frames, size: { width: number; height: number }, ctx: Ctx): Promise<Frames> {
  const frameBytes = src.width * src.height * src.channels;
  const out: Buffer[] = [];
  for (let p = 0; p < src.pages; p++) {
    const frame = src.data.subarray(p * frameBytes, (p + 1) * frameBytes);
    out.push(
      await sharp(frame, {
        raw: { width: src.width, height: src.height, channels: src.channels },
        limitInputPixels: false,
      })
        .resize(size.width, size.height, { fit: 'fill' })
        .timeout({ seconds: ctx.timeoutSeconds })
        .raw()
        .toBuffer(),
    );
  }
  return {
    ...src,
    data: out.length === 1 && out[0] ? out[0] : Buffer.concat(out),
    width: size.width,
    height: size.height,
  };
}

function firstFrame(src: Frames): Frames {
  if (src.pages === 1) return src;
  const { delay: _delay, loop: _loop, ...rest } = src;
  return { ...rest, data: src.data.subarray(0, src.width * src.height * src.channels), pages: 1 };
}

/**
 * The frames for a target width. Each size is resized once and shared by its formats (medium JPEG,
 * WebP and AVIF use one resize), and thumbnails smaller than the largest come from the largest
 * thumbnail rather than from the full-size pixels (a 500 px image is ~40× less to resample than 8 MP).
 */
async function framesAt(
  source: Frames,
  animated: boolean,
  maxWidth: number | null,
  ctx: Ctx,
): Promise<Frames> {
  const base = animated ? source : firstFrame(source);
  if (maxWidth === null) return base;
  const size = outputSize(maxWidth, ctx.origin.width, ctx.origin.height);
  if (size.width === base.width && size.height === base.height) return base;
  const key = `${animated}:${size.width}x${size.height}`;
  let frames = ctx.sized.get(key); // a promise: parallel outputs of one size share one resize
  if (!frames) {
    frames = (async () => {
      const from =
        maxWidth < ctx.largestThumb ? await framesAt(source, animated, ctx.largestThumb, ctx) : base;
      return resizeFrames(from, size, ctx);
    })();
    ctx.sized.set(key, frames);
  }
  return frames;
}

async function renderOne(
  source: Frames,
  spec: VariantSpec,
  absPath: string,
  ctx: Ctx,
): Promise<RenderedVariant> {
  const animated =
    source.pages > 1 && (spec.format === 'gif' || spec.format === 'webp') && spec.maxWidth !== null;
  const frames = await framesAt(source, animated, spec.maxWidth, ctx);

  let encoder: RenderedVariant['encoder'] = 'sharp';
  let data: Buffer;
  if (spec.format === 'avif' && ctx.ffmpegAvif && svtAccepts(frames)) {
    encoder = 'ffmpeg';
    data = await writeAtomic(absPath, (tmp) => encodeAvifFfmpeg(frames, tmp, ctx));
  } else {
    const encoded = await encodeWithSharp(frames, spec.format, ctx);
    data = await writeAtomic(absPath, async (tmp) => {
      await writeAndSync(tmp, encoded);
      return encoded;
    });
  }
  return {
    spec,
    width: frames.width,
    height: frames.height,
    bytes: data.length,
    sha256: createHash('sha256').update(data).digest('hex'),
    encoder,
  };
}

function sharpFrom(frames: Frames, ctx: Ctx): Sharp {
  let img = sharp(frames.data, {
    raw: {
      width: frames.width,
      height: frames.height * frames.pages,
      channels: frames.channels,
      ...(frames.pages > 1 ? { pageHeight: frames.height } : {}),
    },
    limitInputPixels: false, // already checked against the limit when the original was decoded
  }).timeout({ seconds: ctx.timeoutSeconds });
  if (frames.channels === 4 && frames.opaque) img = img.removeAlpha();
  return img;
}

async function encodeWithSharp(frames: Frames, format: OutputFormat, ctx: Ctx): Promise<Buffer> {
  const img = sharpFrom(frames, ctx);
  const anim =
    frames.pages > 1 ? { loop: frames.loop ?? 0, ...(frames.delay ? { delay: frames.delay } : {}) } : {};
  switch (format) {
    case 'jpeg':
      return img.flatten({ background: '#ffffff' }).jpeg(ctx.enc.jpeg).toBuffer();
    case 'png':
      return img.png(ctx.enc.png).toBuffer();
    case 'webp':
      return img.webp({ ...ctx.enc.webp, ...anim }).toBuffer();
    case 'gif':
      return img.gif(anim).toBuffer();
    case 'avif':
      return img.avif(ctx.enc.avifSharp).toBuffer();
    default: {
      const unreachable: never = format;
      throw new Error(`unknown output format ${String(unreachable)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// AVIF via ffmpeg + SVT-AV1

/** SVT-AV1 1.4 refuses frames under 64 px or with odd sizes (4:2:0), and the ffmpeg 5.1 AVIF muxer
 * writes no alpha plane; those outputs go to sharp instead. */
function svtAccepts(frames: Frames): boolean {
  const alpha = frames.channels === 4 && !frames.opaque;
  return (
    !alpha && frames.width >= 64 && frames.height >= 64 && frames.width % 2 === 0 && frames.height % 2 === 0
  );
}

async function encodeAvifFfmpeg(frames: Frames, tmpPath: string, ctx: Ctx): Promise<Buffer> {
  const pixels = frames.channels === 4 ? await sharpFrom(frames, ctx).raw().toBuffer() : frames.data;
  const { preset, crf } = ctx.enc.avifSvt;
  // sRGB pixels → BT.709 full-range YUV 4:2:0, tagged so decoders convert back exactly.
  // The AVIF muxer must seek, so it writes to a file (a pipe fails, and SVT then hangs on exit).
  const args = [
    ...['-hide_banner', '-loglevel', 'error'],
    ...['-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${frames.width}x${frames.height}`, '-i', 'pipe:0'],
    ...['-frames:v', '1', '-vf', 'scale=out_color_matrix=bt709:out_range=pc', '-pix_fmt', 'yuv420p'],
    ...['-c:v', 'libsvtav1', '-preset', String(preset), '-crf', String(crf)],
    ...[
      '-colorspace',
      'bt709',
      '-color_primaries',
      'bt709',
      '-color_trc',
      'iec61966-2-1',
      '-color_range',
      'pc',
    ],
    ...['-f', 'avif', '-y', tmpPath],
  ];
  const res = await runProcess(ffmpegPath, args, {
    stdin: pixels,
    timeoutMs: ctx.timeoutSeconds * 1000,
    maxStdout: 0,
  });
  if (res.code !== 0) throw new Error(`ffmpeg AVIF encode failed (exit ${res.code}): ${res.stderr.trim()}`);
  const fh = await open(tmpPath, 'r+');
  try {
    await fh.sync();
    return await fh.readFile();
  } finally {
    await fh.close();
  }
}

let enginesPromise: Promise<{ sharp: true; ffmpeg: boolean }> | undefined;
let fallbackWarned = false;

/** Which AVIF engines work here. ffmpeg needs the libsvtav1 encoder and the avif muxer. Memoised. */
export function detectAvifEngines(): Promise<{ sharp: true; ffmpeg: boolean }> {
  enginesPromise ??= (async () => {
    try {
      // fluent-ffmpeg asks the binary what it can do (encoders and muxers); the encoding itself is a
      // plain spawn below, with explicit arguments and a hard kill on timeout.
      Ffmpeg.setFfmpegPath(ffmpegPath);
      const withTimeout = <T>(f: (cb: (err: Error | null, v: T) => void) => void) =>
        new Promise<T>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('ffmpeg capability probe timed out')), 10_000);
          f((err, v) => {
            clearTimeout(t);
            if (err) reject(err);
            else resolve(v);
          });
        });
      const [encoders, formats] = await Promise.all([
        withTimeout<Ffmpeg.Encoders>((cb) => Ffmpeg.getAvailableEncoders(cb)),
        withTimeout<Ffmpeg.Formats>((cb) => Ffmpeg.getAvailableFormats(cb)),
      ]);
      const ok = encoders.libsvtav1?.type === 'video' && formats.avif?.canMux === true;
      return { sharp: true as const, ffmpeg: ok };
    } catch {
      return { sharp: true as const, ffmpeg: false };
    }
  })();
  return enginesPromise;
}

async function ffmpegAvifUsable(): Promise<boolean> {
  const { ffmpeg } = await detectAvifEngines();
  if (!ffmpeg && !fallbackWarned) {
    fallbackWarned = true;
    process.emitWarning(
      'ffmpeg with libsvtav1 and the avif muxer not found: AVIF variants are encoded with sharp',
      {
        code: 'PIXELFOX_AVIF_FALLBACK',
      },
    );
  }
  return ffmpeg;
}

// ---------------------------------------------------------------------------------------------
// Files and processes

/** Writes via a temp file in the target directory, then renames: a reader (or a crash) never sees a
 * half-written variant under its final name. The directory is fsynced so the rename survives a crash. */
async function writeAtomic(absPath: string, produce: (tmpPath: string) => Promise<Buffer>): Promise<Buffer> {
  const dir = path.dirname(absPath);
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(absPath)}.${randomBytes(6).toString('hex')}.tmp`);
  let data: Buffer;
  try {
    data = await produce(tmp);
    await rename(tmp, absPath);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
  return data;
}

async function writeAndSync(file: string, data: Buffer): Promise<void> {
  const fh = await open(file, 'wx', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function fsyncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // some filesystems refuse fsync on a directory; the rename itself is still atomic
  }
}

async function readHead(absPath: string, bytes: number): Promise<Buffer> {
  const fh = await open(absPath, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

interface ProcessResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a child process with a hard timeout (SIGKILL: SVT-AV1 can ignore SIGTERM when wedged). */
function runProcess(
  cmd: string,
  args: string[],
  opts: { stdin?: Buffer; timeoutMs: number; maxStdout: number },
): Promise<ProcessResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let outBytes = 0;
    let stderr = '';
    let failure: Error | undefined;
    const timer = setTimeout(() => {
      failure = new Error(`${path.basename(cmd)} timed out after ${opts.timeoutMs} ms`);
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.stdout?.on('data', (chunk: Buffer) => {
      outBytes += chunk.length;
      if (outBytes > opts.maxStdout) {
        failure ??= new Error(`${path.basename(cmd)} produced more output than expected`);
        child.kill('SIGKILL');
        return;
      }
      out.push(chunk);
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr = (stderr + chunk.toString()).slice(-4000);
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (failure) reject(failure);
      else resolve({ code, stdout: Buffer.concat(out), stderr: stripSvtBanner(stderr) });
    });
    if (opts.stdin && child.stdin) {
      child.stdin.on('error', () => undefined); // EPIPE when the child exits early; 'close' reports it
      child.stdin.end(opts.stdin);
    }
  });
}

/** SVT-AV1 prints its banner to stderr regardless of -loglevel. */
function stripSvtBanner(stderr: string): string {
  return stderr
    .split('\n')
    .filter((l) => !l.startsWith('Svt[info]'))
    .join('\n');
}

function isErrnoException(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && 'code' in err;
}

function messageOf(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.replace(/\s+/g, ' ').trim();
}
