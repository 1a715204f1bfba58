// What did the client really send? Decided from the bytes only: magic numbers for the six accepted
// formats, a leading-text check for markup, and a streaming scan for active content hidden anywhere in
// the file (polyglots). The client's Content-Type is never consulted; its filename only has to agree.
// Pure functions over buffers: the upload handler feeds them, nothing here touches the file system.

export type ImageKind = 'jpeg' | 'png' | 'gif' | 'webp' | 'avif' | 'bmp';

export const IMAGE_KINDS: readonly ImageKind[] = ['jpeg', 'png', 'gif', 'webp', 'avif', 'bmp'];

export const KIND_INFO: Readonly<Record<ImageKind, { mime: string; ext: string; exts: readonly string[] }>> =
  {
    jpeg: { mime: 'image/jpeg', ext: 'jpg', exts: ['jpg', 'jpeg', 'jpe', 'jfif'] },
    png: { mime: 'image/png', ext: 'png', exts: ['png', 'apng'] },
    gif: { mime: 'image/gif', ext: 'gif', exts: ['gif'] },
    webp: { mime: 'image/webp', ext: 'webp', exts: ['webp'] },
    avif: { mime: 'image/avif', ext: 'avif', exts: ['avif', 'avifs'] },
    bmp: { mime: 'image/bmp', ext: 'bmp', exts: ['bmp', 'dib'] },
  };

/** How many leading bytes callers should hand to sniffKind / looksLikeMarkup. */
export const SNIFF_HEAD_BYTES = 4096;

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
// DIB header sizes that exist in the wild: CORE(12), OS/2 v2 short(16)/full(64), INFO(40), v2(52), v3(56), v4(108), v5(124).
const BMP_DIB_SIZES = new Set([12, 16, 40, 52, 56, 64, 108, 124]);

function ascii(buf: Buffer, start: number, end: number): string {
  return buf.length >= end ? buf.toString('latin1', start, end) : '';
}

/** AVIF = ISO-BMFF whose leading `ftyp` box lists `avif` (still) or `avis` (sequence) as a brand. Plain HEIC is not AVIF. */
function isAvif(head: Buffer): boolean {
  if (ascii(head, 4, 8) !== 'ftyp') return false;
  const boxSize = head.readUInt32BE(0);
  // ftyp = size, 'ftyp', major brand, minor version, then 4-byte compatible brands.
  if (boxSize < 16 || boxSize % 4 !== 0 || boxSize > 4096) return false;
  const end = Math.min(boxSize, head.length);
  const brands = [ascii(head, 8, 12)];
  for (let off = 16; off + 4 <= end; off += 4) brands.push(ascii(head, off, off + 4));
  return brands.includes('avif') || brands.includes('avis');
}

function isBmp(head: Buffer): boolean {
  // 'BM' alone is two ASCII letters; a text file may well start with them. The DIB header size and
  // a pixel-data offset that lies after both headers make the match specific.
  if (head.length < 18 || head[0] !== 0x42 || head[1] !== 0x4d) return false;
  const pixelOffset = head.readUInt32LE(10);
  const dibSize = head.readUInt32LE(14);
  return BMP_DIB_SIZES.has(dibSize) && pixelOffset >= 14 + dibSize;
}

/** The format of an upload from its first bytes (pass ≥ 64; SNIFF_HEAD_BYTES is plenty), or null. */
export function sniffKind(head: Buffer): ImageKind | null {
  if (head.length >= 3 && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return 'jpeg';
  if (head.length >= 8 && head.subarray(0, 8).equals(PNG_SIGNATURE)) return 'png';
  const gif = ascii(head, 0, 6);
  if (gif === 'GIF87a' || gif === 'GIF89a') return 'gif';
  if (ascii(head, 0, 4) === 'RIFF' && ascii(head, 8, 12) === 'WEBP') {
    const first = ascii(head, 12, 16);
    return first === 'VP8 ' || first === 'VP8L' || first === 'VP8X' ? 'webp' : null;
  }
  if (head.length >= 16 && isAvif(head)) return 'avif';
  if (isBmp(head)) return 'bmp';
  return null;
}

/**
 * Does the client's filename agree with the sniffed kind? No filename or no extension → true (the
 * stored file gets the canonical extension anyway); an extension of another type → false, so
 * `x.php`, `x.svg`, `x.jpg.html` and a PNG named `x.jpg` are all refused.
 */
export function extensionMatches(kind: ImageKind, filename: string | undefined): boolean {
  if (filename === undefined) return true;
  const base = filename.slice(Math.max(filename.lastIndexOf('/'), filename.lastIndexOf('\\')) + 1);
  const dot = base.lastIndexOf('.');
  if (dot === -1 || dot === base.length - 1) return true;
  const ext = base.slice(dot + 1).toLowerCase();
  return KIND_INFO[kind].exts.includes(ext);
}

function isSpace(b: number | undefined): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d || b === 0x0c;
}

/**
 * True when the file starts like markup: after an optional UTF-8 / UTF-16 BOM and whitespace, the first
 * character is '<'. Catches HTML, SVG, XML and PHP files whatever they were renamed to. UTF-16 without
 * a BOM is recognised from the 00-byte pattern of ASCII text.
 */
export function looksLikeMarkup(head: Buffer): boolean {
  let i = 0;
  let step = 1;
  let hi = 0; // offset of the significant byte inside a UTF-16 code unit
  if (head[0] === 0xef && head[1] === 0xbb && head[2] === 0xbf) i = 3;
  else if (head[0] === 0xff && head[1] === 0xfe) [i, step, hi] = [2, 2, 0];
  else if (head[0] === 0xfe && head[1] === 0xff) [i, step, hi] = [2, 2, 1];
  else if (head[0] !== 0 && head[1] === 0) [step, hi] = [2, 0];
  else if (head[0] === 0 && head[1] !== 0) [step, hi] = [2, 1];

  for (; i + step <= head.length; i += step) {
    const b = head[i + hi];
    if (step === 2 && head[i + 1 - hi] !== 0) return false; // not a plain-ASCII code unit
    if (isSpace(b)) continue;
    return b === 0x3c; // '<'
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------
// Active content anywhere in the file.

interface Pattern {
  /** reported as `found` */
  name: string;
  /** lower-case ASCII; letters match either case */
  bytes: Buffer;
  /** index in `bytes` of a non-letter byte searched for with indexOf (fast, native) */
  anchor: number;
  /** if set, the byte after the pattern must be one of these */
  next?: ReadonlySet<number>;
}

const WS = [0x20, 0x09, 0x0a, 0x0d, 0x0c];
const TAG_END = new Set([...WS, 0x2f /* / */, 0x3e /* > */]);
const HTML_END = new Set([...WS, 0x3e /* > */]);
const PHP_END = new Set(WS);

// Each pattern must be improbable in compressed image data. Against uniformly random bytes, a pattern
// of L bytes of which k are letters matches at a given position with probability 2^k / 256^L (times
// the share of allowed follow bytes). Every pattern below is ≤ 2^-41 per position; the weakest ones
// (`<html`, `<body`) dominate the sum, about 2^-40: roughly one false alarm per 200 000 uploads of
// 5 MB, or per 10 000 of 100 MB. None of the real camera photos in the fixtures match.
// Left out on purpose:
// - bare `<svg`: 2^-34.7 per position (≈ 1 in 300 for a 100 MB file). An image-first SVG polyglot
//   cannot render as SVG, its HTML-context payloads (`<svg onload=`) are caught by `onload=`, SVG
//   documents by their namespace URI and, when leading, by looksLikeMarkup.
// - bare `<?xml` and `<!doctype`: Photoshop embeds Apple plists (`<?xml …?><!DOCTYPE plist …>`) in
//   JPEG metadata (fixture xmp/BlueSquare.jpg). A leading `<?xml` is caught by looksLikeMarkup.
// - UTF-16 encoded markup after binary data: a browser cannot decode such a file as UTF-16 HTML.
const PATTERNS: readonly Pattern[] = [
  { name: '<script', text: '<script', anchor: 0 },
  { name: '<iframe', text: '<iframe', anchor: 0 },
  { name: '<object', text: '<object', anchor: 0 },
  { name: '<embed', text: '<embed', anchor: 0, next: TAG_END },
  { name: '<html', text: '<html', anchor: 0, next: HTML_END },
  { name: '<body', text: '<body', anchor: 0, next: HTML_END },
  { name: '<!doctype html', text: '<!doctype html', anchor: 0 },
  { name: '<?php', text: '<?php', anchor: 0, next: PHP_END },
  { name: '<?xml-stylesheet', text: '<?xml-stylesheet', anchor: 0 },
  { name: 'javascript:', text: 'javascript:', anchor: 10 },
  { name: 'vbscript:', text: 'vbscript:', anchor: 8 },
  { name: 'onload=', text: 'onload=', anchor: 6 },
  { name: 'onerror=', text: 'onerror=', anchor: 7 },
  { name: 'http-equiv', text: 'http-equiv', anchor: 4 },
  { name: 'svg namespace', text: 'www.w3.org/2000/svg', anchor: 10 },
].map(({ name, text, anchor, next }) => ({ name, bytes: Buffer.from(text, 'latin1'), anchor, next }));

/**
 * Per anchor byte (in pattern order), its patterns indexed by one more byte of the pattern next to the
 * anchor (`probe`: +1 or -1 from it; letters folded to lower case). In binary data an anchor byte turns
 * up every 256 bytes or so; one table lookup then rejects almost every hit before matchesAt runs.
 */
interface AnchorPlan {
  anchor: number;
  probe: 1 | -1;
  byProbe: ReadonlyArray<readonly Pattern[] | undefined>;
}

const ANCHORS: readonly AnchorPlan[] = (() => {
  const m = new Map<number, Pattern[]>();
  for (const p of PATTERNS) {
    const a = p.bytes[p.anchor];
    if (a === undefined || (a >= 0x61 && a <= 0x7a))
      throw new Error(`pattern ${p.name}: anchor must be a non-letter`);
    m.set(a, [...(m.get(a) ?? []), p]);
  }
  return [...m].map(([anchor, patterns]) => {
    const probe = patterns.every((p) => p.anchor + 1 < p.bytes.length) ? 1 : -1;
    const byProbe: Pattern[][] = [];
    for (const p of patterns) {
      const b = p.bytes[p.anchor + probe];
      if (b === undefined) throw new Error(`pattern ${p.name}: no byte next to its anchor on one side`);
      (byProbe[b] ??= []).push(p);
    }
    return { anchor, probe, byProbe };
  });
})();

const foldLetter = (b: number): number => (b >= 0x41 && b <= 0x5a ? b | 0x20 : b);

/** The first pattern in `bufs` (anchor order, then position, then pattern order), or null. */
function scan(bufs: readonly Buffer[]): string | null {
  for (const { anchor, probe, byProbe } of ANCHORS) {
    for (const buf of bufs) {
      for (let at = buf.indexOf(anchor); at !== -1; at = buf.indexOf(anchor, at + 1)) {
        const near = buf[at + probe];
        if (near === undefined) continue; // the pattern cannot be complete here
        const candidates = byProbe[foldLetter(near)];
        if (!candidates) continue;
        for (const p of candidates) if (matchesAt(buf, at - p.anchor, p)) return p.name;
      }
    }
  }
  return null;
}

/** Longest span a match needs, including the follow byte: the carry kept between chunks. */
const MAX_SPAN = Math.max(...PATTERNS.map((p) => p.bytes.length + (p.next ? 1 : 0)));

function matchesAt(buf: Buffer, start: number, p: Pattern): boolean {
  const end = start + p.bytes.length;
  if (start < 0 || end + (p.next ? 1 : 0) > buf.length) return false;
  for (let i = 0; i < p.bytes.length; i++) {
    const want = p.bytes[i] as number;
    let got = buf[start + i] as number;
    if (want >= 0x61 && want <= 0x7a) got |= 0x20; // ASCII case fold, letters only
    if (got !== want) return false;
  }
  return p.next === undefined || p.next.has(buf[end] as number);
}

/**
 * Streaming scan for active content (HTML, script, PHP, SVG) anywhere in an upload. Feed every chunk
 * in order; memory is bounded by one chunk plus a MAX_SPAN carry, so patterns split across chunk
 * boundaries are still seen. Stops working once something is found.
 */
export class MarkupScanner {
  #carry: Buffer = Buffer.alloc(0);
  #found: string | null = null;

  push(chunk: Buffer): void {
    if (this.#found !== null || chunk.length === 0) return;
    const keep = MAX_SPAN - 1;
    // Matches that start in the carry end at most MAX_SPAN - 1 bytes into the chunk: scan that junction,
    // then the chunk itself (no copy of the whole chunk).
    const junction =
      this.#carry.length === 0
        ? null
        : Buffer.concat([this.#carry, chunk.subarray(0, Math.min(keep, chunk.length))]);
    this.#found = scan(junction ? [junction, chunk] : [chunk]);
    // Keep the tail a match could still complete in; copy it so the caller's chunk can be reused.
    if (chunk.length >= keep) this.#carry = Buffer.from(chunk.subarray(chunk.length - keep));
    else {
      const tail = junction ?? chunk;
      this.#carry = Buffer.from(tail.subarray(Math.max(0, tail.length - keep)));
    }
  }

  /** The first pattern seen (e.g. '<script'), or null. */
  get found(): string | null {
    return this.#found;
  }

  /** The 415 to answer with once the whole body has been pushed, or null when nothing was found. */
  get rejection(): UploadRejection | null {
    return this.#found === null
      ? null
      : {
          ok: false,
          status: 415,
          code: 'active_content',
          message: `active content in the file (${this.#found})`,
        };
  }
}

// ---------------------------------------------------------------------------------------------------

export interface UploadRejection {
  ok: false;
  status: 415;
  code: 'markup_content' | 'unsupported_type' | 'extension_mismatch' | 'active_content';
  message: string;
}

export type HeadCheck = { ok: true; kind: ImageKind } | UploadRejection;

/**
 * The upload handler's first gate, over the head of the body: markup → 415, not one of the six image
 * formats → 415, filename extension of another type → 415. The full-body MarkupScanner and
 * inspectImage (header/structure, 422) come after.
 */
export function checkUploadHead(head: Buffer, filename: string | undefined): HeadCheck {
  if (looksLikeMarkup(head)) {
    return {
      ok: false,
      status: 415,
      code: 'markup_content',
      message: 'markup (HTML/SVG/XML) is not accepted',
    };
  }
  const kind = sniffKind(head);
  if (kind === null) {
    return {
      ok: false,
      status: 415,
      code: 'unsupported_type',
      message: 'accepted: JPEG, PNG, GIF, WebP, AVIF, BMP',
    };
  }
  if (!extensionMatches(kind, filename)) {
    return {
      ok: false,
      status: 415,
      code: 'extension_mismatch',
      message: `content is ${kind}; the filename extension must be one of ${KIND_INFO[kind].exts.join(', ')}`,
    };
  }
  return { ok: true, kind };
}
