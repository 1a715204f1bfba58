// Header inspection of a received upload, before it is published as ImageStored. Reads headers and
// walks container structure; nothing is decoded, so a 50 000 × 50 000 "bomb" costs a few reads.
//
// Order: the magic must match the sniffed kind → our own walk of the structure (declared dimensions
// and frame counts are checked against the limits as soon as they are parsed, then completeness:
// truncation, trailing garbage) → sharp's metadata() as a second opinion, within the same limits.
// Our parse runs first so that a bomb never reaches a decoder library at all. sharp is the only
// parser for AVIF and none for BMP (it has no BMP loader).
//
// Outcomes are values, never exceptions: every problem with the bytes is a 415/422 result. Only I/O
// errors on our own temp file (server faults, not client faults) reject the promise.
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import sharp from 'sharp';
import { sniffKind, SNIFF_HEAD_BYTES } from './sniff.js';
import type { ImageKind } from './sniff.js';

export type InspectResult =
  | { ok: true; kind: ImageKind; width: number; height: number; pages: number }
  | { ok: false; status: 415 | 422; code: string; message: string };

export interface InspectOptions {
  /** Largest width × height of one frame. Default DEFAULT_PIXEL_LIMIT. */
  pixelLimit?: number;
  /** Most frames (GIF/WebP/AVIF sequences). Default DEFAULT_MAX_FRAMES. */
  maxFrames?: number;
  /** Largest width × height × frames, what decoding every frame would cost. Default 10 × pixelLimit. */
  maxTotalPixels?: number;
}

/** 100 MP: a 12 000 × 8 000 panorama fits, a 16k × 16k canvas does not. */
export const DEFAULT_PIXEL_LIMIT = 100_000_000;
export const DEFAULT_MAX_FRAMES = 1000;

type Failure = Extract<InspectResult, { ok: false }>;
interface Limits {
  pixelLimit: number;
  maxFrames: number;
}
interface Declared {
  width: number;
  height: number;
  /** frames counted by our own walk, when the format allows it cheaply */
  frames?: number;
}

const fail = (status: 415 | 422, code: string, message: string): Failure => ({
  ok: false,
  status,
  code,
  message,
});
const truncated = (message: string): Failure => fail(422, 'truncated_image', message);
const unreadable = (message: string): Failure => fail(422, 'unreadable_image', message);
const isFailure = (v: Declared | Failure): v is Failure => 'ok' in v;

function tooManyPixels(width: number, height: number, pixelLimit: number): Failure {
  return fail(422, 'too_many_pixels', `image is ${width} × ${height}; the limit is ${pixelLimit} pixels`);
}

function checkSize(width: number, height: number, pixelLimit: number): Failure | null {
  if (!(width > 0 && height > 0)) return fail(422, 'zero_dimensions', 'image has zero width or height');
  return width * height > pixelLimit ? tooManyPixels(width, height, pixelLimit) : null;
}

// Reads go through one 64 KiB window: header walks touch a few windows, a full JPEG/GIF walk streams.
const WINDOW = 64 * 1024;

/** Positioned reads over a file through a sliding window. */
class FileBytes {
  #buf: Buffer = Buffer.alloc(0);
  #start = 0;

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
  ) {}

  /** Makes [pos, pos + n) readable with at(); false if that range runs past the end of the file. */
  async ensure(pos: number, n: number): Promise<boolean> {
    if (pos < 0 || n < 0 || pos + n > this.size) return false;
    if (pos >= this.#start && pos + n <= this.#start + this.#buf.length) return true;
    const len = Math.min(Math.max(n, WINDOW), this.size - pos);
    const buf = Buffer.allocUnsafe(len);
    let got = 0;
    while (got < len) {
      const { bytesRead } = await this.fh.read(buf, got, len - got, pos + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.#buf = buf.subarray(0, got);
    this.#start = pos;
    return got >= n;
  }

  at(pos: number): number {
    const b = this.#buf[pos - this.#start];
    if (b === undefined) throw new RangeError(`FileBytes: offset ${pos} not loaded`);
    return b;
  }

  /** Copy of [pos, pos + n); call ensure first. */
  slice(pos: number, n: number): Buffer {
    const off = pos - this.#start;
    if (off < 0 || off + n > this.#buf.length) throw new RangeError(`FileBytes: ${pos}+${n} not loaded`);
    return Buffer.from(this.#buf.subarray(off, off + n));
  }

  /** The loaded window, for tight synchronous loops; offsets in it are relative to `start`. */
  view(): { buf: Buffer; start: number } {
    return { buf: this.#buf, start: this.#start };
  }

  /** The last `n` bytes (or fewer), with trailing 0x00 padding removed. */
  async tailWithoutZeroPadding(n: number): Promise<Buffer> {
    const len = Math.min(n, this.size);
    await this.ensure(this.size - len, len);
    const tail = this.slice(this.size - len, len);
    let end = tail.length;
    while (end > 0 && tail[end - 1] === 0) end--;
    return tail.subarray(0, end);
  }
}

// Zero padding after the end marker is tolerated (some writers pad to a block size); how much of it
// we look through is bounded.
const TAIL_BYTES = 4096;

// --- JPEG -------------------------------------------------------------------------------------------

function isSof(marker: number): boolean {
  // SOF0..SOF15 minus DHT (C4), JPG (C8) and DAC (CC), which share the range.
  return marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
}

/** Markers that may follow entropy-coded data: EOI, SOS, tables (DHT, DAC, DQT, DRI, DNL), APPn, COM. */
function mayFollowScan(marker: number): boolean {
  return (
    marker === 0xd9 ||
    marker === 0xda ||
    marker === 0xc4 ||
    marker === 0xcc ||
    (marker >= 0xdb && marker <= 0xdd) ||
    (marker >= 0xe0 && marker <= 0xef) ||
    marker === 0xfe
  );
}

/**
 * Within the loaded window, from `from`: the offset of the 0xFF that ends the entropy-coded data
 * (anything but a stuffed FF00, a restart marker or a fill byte), or where to resume with the next window.
 */
function scanEntropy(
  view: { buf: Buffer; start: number },
  from: number,
): { marker: number } | { resume: number } {
  const { buf, start } = view;
  let i = from - start;
  for (;;) {
    i = buf.indexOf(0xff, i);
    if (i === -1) return { resume: start + buf.length };
    if (i + 1 >= buf.length) return { resume: start + i };
    const b = buf[i + 1] as number;
    if (b === 0x00 || (b >= 0xd0 && b <= 0xd7)) i += 2;
    else if (b === 0xff) i += 1;
    else return { marker: start + i };
  }
}

/**
 * Walks the whole file: marker segments (skipped by their lengths) and entropy-coded data (a scan
 * for 0xFF bytes, no decoding) up to EOI. Reads every byte once but decodes nothing; the cost is of
 * the order of hashing the upload. What it finds:
 * - truncation anywhere (the file ends before EOI), not only in the last bytes;
 * - corruption that breaks the marker structure (fixture corrupted.jpg has FF 9F in its scan data,
 *   on which libjpeg reports "premature end of data segment");
 * - the real EOI, so data after it is tolerated: cameras and phones append to JPEGs (an exif-org
 *   fixture has a stray byte after EOI, Motion Photos append an MP4, MPF appends preview images).
 */
async function jpegStructure(r: FileBytes, limits: Limits): Promise<Declared | Failure> {
  let declared: Declared | null = null;
  let sawScan = false;
  let pos = 2;
  for (;;) {
    if (!(await r.ensure(pos, 2))) return truncated('JPEG ends before its end-of-image marker');
    if (r.at(pos) !== 0xff) return unreadable('JPEG structure is corrupt (marker expected)');
    let marker = r.at(pos + 1);
    while (marker === 0xff) {
      // Fill bytes before a marker.
      pos++;
      if (!(await r.ensure(pos, 2))) return truncated('JPEG ends before its end-of-image marker');
      marker = r.at(pos + 1);
    }
    if (marker === 0xd9) {
      if (declared === null || !sawScan) return unreadable('JPEG has no image data');
      return declared;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      pos += 2; // stand-alone markers (TEM, RSTn)
      continue;
    }
    if (marker === 0x00 || marker === 0xd8) return unreadable('JPEG structure is corrupt (invalid marker)');
    if (!(await r.ensure(pos + 2, 2))) return truncated('JPEG ends inside a segment header');
    const len = (r.at(pos + 2) << 8) | r.at(pos + 3);
    if (len < 2) return unreadable('JPEG segment length is invalid');
    const next = pos + 2 + len;
    if (next > r.size) return truncated('JPEG ends inside a segment');

    if (isSof(marker) && declared === null) {
      if (len < 8 || !(await r.ensure(pos + 5, 4))) return unreadable('JPEG frame header is too short');
      declared = {
        height: (r.at(pos + 5) << 8) | r.at(pos + 6),
        width: (r.at(pos + 7) << 8) | r.at(pos + 8),
      };
      const bad = checkSize(declared.width, declared.height, limits.pixelLimit);
      if (bad) return bad;
    }
    if (marker !== 0xda) {
      pos = next;
      continue;
    }

    // Start of scan: skip the entropy-coded data, one window at a time.
    if (declared === null) return unreadable('JPEG scan before frame header');
    sawScan = true;
    let p = next;
    for (;;) {
      if (!(await r.ensure(p, 2))) return truncated('JPEG ends before its end-of-image marker');
      const found = scanEntropy(r.view(), p);
      if ('resume' in found) {
        p = found.resume;
        continue;
      }
      pos = found.marker;
      break;
    }
    if (!mayFollowScan(r.at(pos + 1))) return unreadable('JPEG scan data is corrupt');
  }
}

// --- PNG --------------------------------------------------------------------------------------------

const IEND = Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);

async function pngStructure(r: FileBytes, limits: Limits): Promise<Declared | Failure> {
  // Signature (8), then IHDR must be the first chunk: length 13, type, width, height.
  if (!(await r.ensure(0, 24))) return truncated('PNG ends inside its header');
  if (r.slice(8, 8).toString('latin1') !== '\x00\x00\x00\x0dIHDR')
    return unreadable('PNG does not start with IHDR');
  const declared = { width: r.slice(16, 4).readUInt32BE(0), height: r.slice(20, 4).readUInt32BE(0) };
  const bad = checkSize(declared.width, declared.height, limits.pixelLimit);
  if (bad) return bad;
  const tail = await r.tailWithoutZeroPadding(TAIL_BYTES);
  if (tail.length < IEND.length || !tail.subarray(tail.length - IEND.length).equals(IEND)) {
    return truncated('PNG does not end with an IEND chunk');
  }
  return declared;
}

// --- GIF --------------------------------------------------------------------------------------------

/**
 * Walks the GIF block structure (extensions and image descriptors, skipping sub-blocks by their length
 * bytes) to the trailer. Counts frames and stops as soon as there are more than maxFrames; the canvas
 * grows to cover any frame that lies outside the logical screen, as decoders do.
 */
async function gifStructure(r: FileBytes, limits: Limits): Promise<Declared | Failure> {
  if (!(await r.ensure(0, 13))) return truncated('GIF ends inside its header');
  let width = r.at(6) | (r.at(7) << 8);
  let height = r.at(8) | (r.at(9) << 8);
  const flags = r.at(10);
  // Only the upper bound here: a 0 × 0 logical screen is legal, decoders then use the frame size.
  if (width * height > limits.pixelLimit) return tooManyPixels(width, height, limits.pixelLimit);
  let pos = 13 + (flags & 0x80 ? 3 * (2 << (flags & 0x07)) : 0);
  let frames = 0;

  const skipSubBlocks = async (from: number): Promise<number> => {
    let p = from;
    for (;;) {
      if (!(await r.ensure(p, 1))) return -1;
      const n = r.at(p);
      p += 1 + n;
      if (n === 0) return p;
    }
  };

  for (;;) {
    if (!(await r.ensure(pos, 1))) return truncated('GIF ends before its trailer');
    const block = r.at(pos);
    if (block === 0x3b) break; // trailer
    if (block === 0x21) {
      const end = await skipSubBlocks(pos + 2); // introducer, label, sub-blocks
      if (end === -1) return truncated('GIF ends inside an extension');
      pos = end;
    } else if (block === 0x2c) {
      if (!(await r.ensure(pos, 10))) return truncated('GIF ends inside an image descriptor');
      const left = r.at(pos + 1) | (r.at(pos + 2) << 8);
      const top = r.at(pos + 3) | (r.at(pos + 4) << 8);
      const w = r.at(pos + 5) | (r.at(pos + 6) << 8);
      const h = r.at(pos + 7) | (r.at(pos + 8) << 8);
      const f = r.at(pos + 9);
      if (++frames > limits.maxFrames) {
        return fail(422, 'too_many_frames', `animation has more than ${limits.maxFrames} frames`);
      }
      width = Math.max(width, left + w);
      height = Math.max(height, top + h);
      if (width * height > limits.pixelLimit) return tooManyPixels(width, height, limits.pixelLimit);
      const end = await skipSubBlocks(pos + 10 + (f & 0x80 ? 3 * (2 << (f & 0x07)) : 0) + 1); // + LZW min code size
      if (end === -1) return truncated('GIF ends inside image data');
      pos = end;
    } else {
      return unreadable(`GIF block type 0x${block.toString(16)} is invalid`);
    }
  }
  if (frames === 0) return unreadable('GIF has no image');
  const bad = checkSize(width, height, limits.pixelLimit);
  if (bad) return bad;
  // After the trailer only zero padding is tolerated.
  const after = r.size - (pos + 1);
  if (after > TAIL_BYTES || (after > 0 && !(await r.ensure(pos + 1, after)))) {
    return fail(422, 'trailing_data', 'GIF has data after its trailer');
  }
  if (after > 0 && !r.slice(pos + 1, after).every((b) => b === 0)) {
    return fail(422, 'trailing_data', 'GIF has data after its trailer');
  }
  return { width, height, frames };
}

// --- WebP -------------------------------------------------------------------------------------------

async function webpStructure(r: FileBytes, limits: Limits): Promise<Declared | Failure> {
  if (!(await r.ensure(0, 30))) return truncated('WebP ends inside its header');
  const declared = webpDimensions(r.slice(12, 4).toString('latin1'), r.slice(20, 10));
  if (isFailure(declared)) return declared;
  const bad = checkSize(declared.width, declared.height, limits.pixelLimit);
  if (bad) return bad;
  const riffSize = r.slice(4, 4).readUInt32LE(0);
  if (riffSize + 8 > r.size) return truncated('WebP is shorter than its RIFF size');
  if (riffSize + 8 < r.size) return fail(422, 'trailing_data', 'WebP has data after its RIFF container');
  return declared;
}

function webpDimensions(chunk: string, data: Buffer): Declared | Failure {
  switch (chunk) {
    case 'VP8X':
      // Canvas width-1 and height-1, 24 bits each.
      return { width: data.readUIntLE(4, 3) + 1, height: data.readUIntLE(7, 3) + 1 };
    case 'VP8 ':
      // Frame tag (3), start code 9D 01 2A, then 14-bit width and height (top 2 bits: scaling).
      if (data[3] !== 0x9d || data[4] !== 0x01 || data[5] !== 0x2a)
        return unreadable('WebP VP8 start code missing');
      return { width: data.readUInt16LE(6) & 0x3fff, height: data.readUInt16LE(8) & 0x3fff };
    case 'VP8L': {
      // Signature 0x2F, then width-1 and height-1 as 14-bit fields, little-endian bit order.
      if (data[0] !== 0x2f) return unreadable('WebP lossless signature missing');
      const bits = data.readUInt32LE(1);
      return { width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
    }
    default:
      return unreadable('WebP has no VP8/VP8L/VP8X chunk first');
  }
}

// --- BMP --------------------------------------------------------------------------------------------

const BI_RGB = 0;
const BI_RLE8 = 1;
const BI_RLE4 = 2;
const BI_BITFIELDS = 3;
const BI_ALPHABITFIELDS = 6;

/**
 * BMP is parsed by us alone (sharp has no BMP loader). The pixel data must fit in the file: for
 * uncompressed data that is offset + row stride × rows, for RLE the declared image size. The header's
 * own file-size field is not trusted either way (writers often leave it 0 or wrong); the real size is.
 */
async function bmpStructure(r: FileBytes, limits: Limits): Promise<Declared | Failure> {
  if (!(await r.ensure(0, 30))) return truncated('BMP ends inside its header');
  const head = r.slice(0, 30);
  const pixelOffset = head.readUInt32LE(10);
  const dibSize = head.readUInt32LE(14);
  let width: number;
  let height: number;
  let planes: number;
  let bpp: number;
  let compression = BI_RGB;
  let imageSize = 0;
  if (dibSize === 12) {
    width = head.readUInt16LE(18);
    height = head.readUInt16LE(20);
    planes = head.readUInt16LE(22);
    bpp = head.readUInt16LE(24);
  } else {
    if (!(await r.ensure(0, 14 + Math.min(dibSize, 40)))) return truncated('BMP ends inside its header');
    const dib = r.slice(14, Math.min(dibSize, 40));
    width = dib.readInt32LE(4);
    height = dib.readInt32LE(8);
    planes = dib.readUInt16LE(12);
    bpp = dib.readUInt16LE(14);
    if (dibSize >= 40) {
      compression = dib.readUInt32LE(16);
      imageSize = dib.readUInt32LE(20);
    }
    // OS/2 2.x headers (16, 64) number their compressions differently; only RGB and RLE agree.
    const os2 = dibSize === 16 || dibSize === 64;
    if (os2 && compression > BI_RLE4)
      return fail(415, 'unsupported_type', 'OS/2 BMP compression is not supported');
  }
  height = Math.abs(height); // negative = top-down rows

  if (![1, 4, 8, 16, 24, 32].includes(bpp) || planes !== 1) return unreadable('BMP header is invalid');
  let dataEnd: number;
  switch (compression) {
    case BI_RGB:
    case BI_BITFIELDS:
    case BI_ALPHABITFIELDS: {
      const stride = Math.floor((bpp * width + 31) / 32) * 4;
      dataEnd = pixelOffset + stride * height;
      break;
    }
    case BI_RLE8:
    case BI_RLE4:
      if (
        (compression === BI_RLE8 && bpp !== 8) ||
        (compression === BI_RLE4 && bpp !== 4) ||
        imageSize === 0
      ) {
        return unreadable('BMP run-length header is invalid');
      }
      dataEnd = pixelOffset + imageSize;
      break;
    default:
      // 4 = embedded JPEG, 5 = embedded PNG, and anything newer.
      return fail(415, 'unsupported_type', `BMP compression ${compression} is not supported`);
  }
  const bad = checkSize(width, height, limits.pixelLimit);
  if (bad) return bad;
  if (dataEnd > r.size) return truncated('BMP pixel data runs past the end of the file');
  return { width, height };
}

// --- sharp ------------------------------------------------------------------------------------------

interface SharpView {
  format: string;
  compression: string | undefined;
  width: number;
  height: number;
  pages: number;
}

async function sharpMetadata(absPath: string): Promise<SharpView | Failure> {
  try {
    // limitInputPixels: false so the declared size is reported instead of refused; we compare it
    // against our own limit. metadata() reads headers only.
    const m = await sharp(absPath, { limitInputPixels: false }).metadata();
    return {
      format: m.format,
      compression: m.compression,
      width: m.width,
      height: m.pageHeight ?? m.height,
      pages: m.pages ?? 1,
    };
  } catch (err) {
    // libvips messages can run to dozens of lines (one per failed seek): keep the first and the last.
    const lines = (err instanceof Error ? err.message : String(err))
      .split(absPath)
      .join('<file>')
      .split('\n');
    const detail = [...new Set([lines[0], lines.at(-1)])].join(' … ').slice(0, 300);
    return unreadable(`image header could not be read: ${detail}`);
  }
}

const SHARP_FORMAT: Record<Exclude<ImageKind, 'bmp'>, string> = {
  jpeg: 'jpeg',
  png: 'png',
  gif: 'gif',
  webp: 'webp',
  avif: 'heif',
};

// --- entry point ------------------------------------------------------------------------------------

async function structure(r: FileBytes, kind: ImageKind, limits: Limits): Promise<Declared | Failure | null> {
  switch (kind) {
    case 'jpeg':
      return jpegStructure(r, limits);
    case 'png':
      return pngStructure(r, limits);
    case 'gif':
      return gifStructure(r, limits);
    case 'webp':
      return webpStructure(r, limits);
    case 'bmp':
      return bmpStructure(r, limits);
    case 'avif':
      return null; // ISO-BMFF box trees are left to libheif (via sharp)
  }
}

/**
 * Inspects the file at `absPath`, which the upload handler sniffed as `kind`. Reads headers and
 * structure only. 415: the bytes are not (a supported variant of) `kind`; 422: truncated, unreadable,
 * zero-sized, too many pixels or frames.
 */
export async function inspectImage(
  absPath: string,
  kind: ImageKind,
  opts: InspectOptions = {},
): Promise<InspectResult> {
  const pixelLimit = opts.pixelLimit ?? DEFAULT_PIXEL_LIMIT;
  const maxFrames = opts.maxFrames ?? DEFAULT_MAX_FRAMES;
  const maxTotalPixels = opts.maxTotalPixels ?? 10 * pixelLimit;

  const fh = await open(absPath, 'r');
  let declared: Declared | null;
  try {
    const { size } = await fh.stat();
    if (size === 0) return fail(422, 'empty_file', 'the file is empty');
    const r = new FileBytes(fh, size);
    await r.ensure(0, Math.min(size, SNIFF_HEAD_BYTES));
    if (sniffKind(r.slice(0, Math.min(size, SNIFF_HEAD_BYTES))) !== kind) {
      return fail(415, 'unsupported_type', `the file is not ${kind}`);
    }
    const s = await structure(r, kind, { pixelLimit, maxFrames });
    if (s !== null && isFailure(s)) return s;
    declared = s;
  } finally {
    await fh.close();
  }

  if (kind === 'bmp') {
    // declared is always set for BMP; sharp cannot read it.
    return declared === null
      ? unreadable('BMP header unreadable')
      : { ok: true, kind, width: declared.width, height: declared.height, pages: 1 };
  }

  const meta = await sharpMetadata(absPath);
  if (isSharpFailure(meta)) return meta;
  if (meta.format !== SHARP_FORMAT[kind]) return fail(415, 'unsupported_type', `the file is not ${kind}`);
  if (kind === 'avif' && meta.compression !== 'av1') {
    return fail(415, 'unsupported_type', 'HEIF images other than AVIF are not supported');
  }
  const bad = checkSize(meta.width, meta.height, pixelLimit);
  if (bad) return bad;

  const pages = Math.max(meta.pages, declared?.frames ?? 1);
  if (pages > maxFrames)
    return fail(422, 'too_many_frames', `animation has ${pages} frames; the limit is ${maxFrames}`);
  if (meta.width * meta.height * pages > maxTotalPixels) {
    return fail(
      422,
      'too_many_pixels',
      `animation has ${pages} frames of ${meta.width} × ${meta.height}; too many pixels`,
    );
  }
  return { ok: true, kind, width: meta.width, height: meta.height, pages };
}

function isSharpFailure(v: SharpView | Failure): v is Failure {
  return 'ok' in v;
}
