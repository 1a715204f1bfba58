// The storage node's content checks against real bytes: the hostile corpus, the real camera photos
// from the shared fixtures, and the streaming scanner's chunk-boundary behaviour.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { inspectImage } from '../../services/storage-node/inspect.js';
import {
  checkUploadHead,
  extensionMatches,
  KIND_INFO,
  looksLikeMarkup,
  MarkupScanner,
  sniffKind,
  SNIFF_HEAD_BYTES,
} from '../../services/storage-node/sniff.js';
import type { ImageKind } from '../../services/storage-node/sniff.js';
import { caseBytes, gif, hostileCases, noise } from '../fixtures/hostile/generate.js';

const EXIF_SAMPLES = path.resolve(import.meta.dirname, '../../../shared/fixtures/exif-samples/jpg');

type Outcome =
  | { status: 200; kind: ImageKind; width: number; height: number; pages: number }
  | { status: number; code: string };

/** The storage node's pipeline in order: head gate → whole-body scan → header inspection. */
async function evaluate(
  dir: string,
  bytes: Buffer,
  filename: string,
  chunkSize = 64 * 1024,
): Promise<Outcome> {
  const head = checkUploadHead(bytes.subarray(0, SNIFF_HEAD_BYTES), filename);
  if (!head.ok) return { status: head.status, code: head.code };
  const scanner = new MarkupScanner();
  for (let off = 0; off < bytes.length; off += chunkSize) scanner.push(bytes.subarray(off, off + chunkSize));
  if (scanner.rejection) return { status: scanner.rejection.status, code: scanner.rejection.code };
  const file = path.join(dir, `upload-${Math.random().toString(36).slice(2)}`);
  await writeFile(file, bytes);
  const r = await inspectImage(file, head.kind, { pixelLimit: 100_000_000 });
  return r.ok ? { status: 200, kind: r.kind, width: r.width, height: r.height, pages: r.pages } : r;
}

async function listJpegs(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile() && /\.jpe?g$/i.test(e.name))
    .map((e) => path.join(e.parentPath, e.name))
    .sort();
}

void t.test('hostile corpus: every case has its expected outcome', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-hostile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const cases = hostileCases();
  t.ok(cases.length >= 30, 'corpus is not empty');
  t.equal(new Set(cases.map((c) => c.filename)).size, cases.length, 'filenames are unique');

  for (const c of cases) {
    const outcome = await evaluate(dir, caseBytes(c), c.filename);
    if (c.expect === 'accept') {
      t.equal(outcome.status, 200, `${c.name}: accepted (${JSON.stringify(outcome)})`);
    } else {
      t.ok(
        c.status?.includes(outcome.status),
        `${c.name}: status ${outcome.status} in ${JSON.stringify(c.status)}`,
      );
      if (c.code !== undefined && 'code' in outcome) t.equal(outcome.code, c.code, `${c.name}: code`);
    }
  }
});

void t.test('hostile corpus: outcome does not depend on chunk boundaries', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-hostile-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const c of hostileCases()) {
    if (typeof c.bytes === 'function') continue;
    const whole = await evaluate(dir, c.bytes, c.filename, 1 << 30);
    for (const size of [1, 7, 64]) {
      t.same(await evaluate(dir, c.bytes, c.filename, size), whole, `${c.name} in ${size}-byte chunks`);
    }
  }
});

void t.test('real camera photos pass every check', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-photos-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const files = await listJpegs(EXIF_SAMPLES);
  t.ok(files.length >= 60, `found ${files.length} sample photos`);
  for (const file of files) {
    const rel = path.relative(EXIF_SAMPLES, file);
    const bytes = await readFile(file);
    const scanner = new MarkupScanner();
    scanner.push(bytes);
    t.equal(scanner.found, null, `${rel}: no active content`);

    if (rel === 'corrupted.jpg') {
      // FF 9F inside its scan data (offset 229375): the structure walk refuses it; libjpeg would
      // stop there with "premature end of data segment".
      const outcome = await evaluate(dir, bytes, rel);
      t.match(outcome, { status: 422, code: 'unreadable_image' }, `${rel}: refused`);
      continue;
    }
    // invalid/ holds photos whose EXIF is broken; the images themselves are fine.
    const outcome = await evaluate(dir, bytes, path.basename(file));
    t.equal(outcome.status, 200, `${rel}: accepted (${JSON.stringify(outcome)})`);
    if (outcome.status === 200 && 'kind' in outcome) t.equal(outcome.kind, 'jpeg');

    // Data after EOI is tolerated (the walk stops at EOI).
    const trailing = await evaluate(
      dir,
      Buffer.concat([bytes, Buffer.from('\x01\x02junk', 'latin1')]),
      'x.jpg',
    );
    t.same(trailing, outcome, `${rel}: data after EOI tolerated`);
    // Losing the last 100 bytes (inside the scan data) is a truncation.
    const cut = await evaluate(dir, bytes.subarray(0, bytes.length - 100), 'x.jpg');
    t.match(cut, { status: 422, code: 'truncated_image' }, `${rel}: truncated copy refused`);
  }
});

void t.test('progressive JPEG: multi-scan walk', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-progressive-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { default: sharp } = await import('sharp');
  const jpeg = await sharp(path.join(EXIF_SAMPLES, 'mobile/jolla.jpg'))
    .resize(640)
    .jpeg({ progressive: true, quality: 85 })
    .toBuffer();
  let scans = 0;
  for (
    let i = jpeg.indexOf(Buffer.from([0xff, 0xda]));
    i !== -1;
    i = jpeg.indexOf(Buffer.from([0xff, 0xda]), i + 2)
  )
    scans++;
  t.ok(scans > 1, `${scans} scans`);
  const padded = Buffer.concat([jpeg, Buffer.from('tail', 'latin1')]);
  t.match(await evaluate(dir, padded, 'p.jpg'), { status: 200, width: 640 });
  // Cut in the middle of the first scan of several.
  const firstScan = jpeg.indexOf(Buffer.from([0xff, 0xda]));
  const secondScan = jpeg.indexOf(Buffer.from([0xff, 0xda]), firstScan + 2);
  t.match(await evaluate(dir, jpeg.subarray(0, Math.floor((firstScan + secondScan) / 2)), 'p.jpg'), {
    status: 422,
    code: 'truncated_image',
  });
});

void t.test('inspectImage reports dimensions and frames', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-inspect-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'Canon_40D.jpg');
  await writeFile(file, await readFile(path.join(EXIF_SAMPLES, 'Canon_40D.jpg')));
  t.same(await inspectImage(file, 'jpeg', { pixelLimit: 100_000_000 }), {
    ok: true,
    kind: 'jpeg',
    width: 100,
    height: 68,
    pages: 1,
  });

  // The sniffed kind must agree with the bytes.
  const wrong = await inspectImage(file, 'png', { pixelLimit: 100_000_000 });
  t.match(wrong, { ok: false, status: 415, code: 'unsupported_type' });

  // Limits come from the options.
  t.match(await inspectImage(file, 'jpeg', { pixelLimit: 100 * 68 - 1 }), {
    ok: false,
    status: 422,
    code: 'too_many_pixels',
  });

  const anim = path.join(dir, 'anim.gif');
  await writeFile(anim, gif(12));
  t.match(await inspectImage(anim, 'gif', { pixelLimit: 1000 }), {
    ok: true,
    pages: 12,
    width: 1,
    height: 1,
  });
  t.match(await inspectImage(anim, 'gif', { pixelLimit: 1000, maxFrames: 11 }), {
    ok: false,
    code: 'too_many_frames',
  });
  t.match(await inspectImage(anim, 'gif', { pixelLimit: 1000, maxTotalPixels: 11 }), {
    ok: false,
    code: 'too_many_pixels',
  });

  const empty = path.join(dir, 'empty');
  await writeFile(empty, Buffer.alloc(0));
  t.match(await inspectImage(empty, 'jpeg', { pixelLimit: 1000 }), {
    ok: false,
    status: 422,
    code: 'empty_file',
  });

  await t.rejects(inspectImage(path.join(dir, 'missing.jpg'), 'jpeg', { pixelLimit: 1000 }), {
    code: 'ENOENT',
  });
});

void t.test('sniffKind', async (t) => {
  const byName = new Map(hostileCases().map((c) => [c.filename, caseBytes(c)]));
  const get = (name: string): Buffer => {
    const b = byName.get(name);
    if (b === undefined) throw new Error(`no case ${name}`);
    return b;
  };
  t.equal(sniffKind(get('camera.jpg')), 'jpeg');
  t.equal(sniffKind(get('noise.png')), 'png');
  t.equal(sniffKind(get('anim.gif')), 'gif');
  t.equal(sniffKind(get('sample.webp')), 'webp');
  t.equal(sniffKind(get('sample.avif')), 'avif');
  t.equal(sniffKind(get('image.bmp')), 'bmp');
  t.equal(sniffKind(get('photo.heic')), null, 'HEIC is not AVIF');
  t.equal(sniffKind(Buffer.alloc(0)), null);
  t.equal(
    sniffKind(Buffer.from('BM this is text, not a bitmap header', 'latin1')),
    null,
    'BM alone is not BMP',
  );
  t.equal(sniffKind(Buffer.from('RIFF\x00\x00\x00\x00WAVEfmt ', 'latin1')), null, 'RIFF that is not WebP');
  t.equal(sniffKind(Buffer.from('GIF88a', 'latin1')), null);
  t.equal(sniffKind(noise(4096)), null);
  // AVIF brand among the compatible brands only.
  const ftyp = Buffer.concat([Buffer.from([0, 0, 0, 24]), Buffer.from('ftypmif10000avifmif1', 'latin1')]);
  ftyp.writeUInt32BE(0, 12);
  t.equal(sniffKind(ftyp), 'avif');
});

void t.test('extensionMatches', async (t) => {
  t.ok(extensionMatches('jpeg', undefined), 'no filename');
  t.ok(extensionMatches('jpeg', 'photo'), 'no extension');
  t.ok(extensionMatches('jpeg', 'photo.'), 'empty extension');
  for (const ext of KIND_INFO.jpeg.exts) t.ok(extensionMatches('jpeg', `a.${ext.toUpperCase()}`), ext);
  t.ok(extensionMatches('png', 'C:\\fakepath\\holiday.png'));
  t.ok(extensionMatches('avif', 'a.avif'));
  t.notOk(extensionMatches('png', 'a.jpg'));
  t.notOk(extensionMatches('jpeg', 'a.jpg.php'));
  t.notOk(extensionMatches('jpeg', 'a.php.jpg/x.svg'));
  t.notOk(extensionMatches('gif', 'anim.gif.html'));
  t.notOk(extensionMatches('bmp', 'a.svg'));
  for (const kind of Object.keys(KIND_INFO) as ImageKind[]) {
    t.ok(extensionMatches(kind, `x.${KIND_INFO[kind].ext}`), `${kind} canonical extension is accepted`);
  }
});

void t.test('looksLikeMarkup', async (t) => {
  const yes = [
    '<html>',
    '   \n\t<svg/>',
    '\ufeff<?xml version="1.0"?>',
    '<?php echo 1;',
    '<!-- comment -->',
  ].map((s) => Buffer.from(s, 'utf8'));
  yes.push(Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from(' <svg>', 'utf16le')]));
  yes.push(Buffer.concat([Buffer.from([0xfe, 0xff]), Buffer.from('<svg>', 'utf16le').swap16()]));
  yes.push(Buffer.from('\n<html>', 'utf16le')); // UTF-16LE without BOM
  for (const b of yes) t.ok(looksLikeMarkup(b), JSON.stringify(b.toString('latin1')));
  const no = [
    Buffer.alloc(0),
    Buffer.from('hello <b>', 'utf8'),
    Buffer.from('    ', 'utf8'),
    Buffer.from([0xff, 0xd8, 0xff]),
  ];
  for (const b of no) t.notOk(looksLikeMarkup(b), JSON.stringify(b.toString('latin1')));
});

void t.test('MarkupScanner', async (t) => {
  const payloads: Array<[string, string]> = [
    ['<SCRIPT src=x>', '<script'],
    ['<ScRiPt>', '<script'],
    ['<iframe src=//x>', '<iframe'],
    ['<html lang=en>', '<html'],
    ['<BODY>', '<body'],
    ['<!DOCTYPE HTML>', '<!doctype html'],
    ['<?php\nsystem(1);', '<?php'],
    ['href="JavaScript:alert(1)"', 'javascript:'],
    ['<svg/onload=alert(1)>', 'onload='],
    ['<img src=x onerror=alert(1)>', 'onerror='],
    ['<meta http-equiv="refresh">', 'http-equiv'],
    ['xmlns="http://www.w3.org/2000/svg"', 'svg namespace'],
    ['<?xml-stylesheet href="x.xsl"?>', '<?xml-stylesheet'],
  ];
  const prefix = noise(300, 1).map((b) => b & 0x3f); // below '<': no accidental patterns
  for (const [payload, name] of payloads) {
    const body = Buffer.concat([prefix, Buffer.from(payload, 'latin1'), prefix]);
    // Every split point through the payload, including splits inside the follow byte.
    for (let split = prefix.length - 1; split <= prefix.length + payload.length + 1; split++) {
      const s = new MarkupScanner();
      s.push(body.subarray(0, split));
      s.push(body.subarray(split));
      if (s.found !== name) t.fail(`${payload} split at ${split - prefix.length}: found ${s.found}`);
    }
    // One byte at a time.
    const s = new MarkupScanner();
    for (const b of body) s.push(Buffer.from([b]));
    t.equal(s.found, name, `${payload} byte by byte`);
    t.match(s.rejection, { status: 415, code: 'active_content' });
  }

  // Near misses.
  for (const harmless of [
    '<scrip t>',
    '<htmlx',
    '<bodyguard',
    '<?phpx',
    'javascript :',
    '<svg width=1>',
    '<?xml version="1.0"?>',
    '<!DOCTYPE plist>',
  ]) {
    const s = new MarkupScanner();
    s.push(Buffer.from(harmless, 'latin1'));
    t.equal(s.found, null, `no match: ${harmless}`);
    t.equal(s.rejection, null);
  }

  // 16 MiB of noise in 64 KiB chunks: no false alarm, and the carry stays small.
  const s = new MarkupScanner();
  const big = noise(16 * 1024 * 1024, 12345);
  for (let off = 0; off < big.length; off += 65536) s.push(big.subarray(off, off + 65536));
  t.equal(s.found, null, 'random data does not match');

  // The caller may reuse its chunk buffer: the scanner keeps a copy of the carry.
  const reused = Buffer.from('xx<scr', 'latin1');
  const r = new MarkupScanner();
  r.push(reused);
  reused.fill(0x20);
  r.push(Buffer.from('ipt>', 'latin1'));
  t.equal(r.found, '<script');
});

void t.test('checkUploadHead', async (t) => {
  t.match(checkUploadHead(Buffer.from('<svg/>'), 'a.jpg'), {
    ok: false,
    status: 415,
    code: 'markup_content',
  });
  t.match(checkUploadHead(Buffer.from('hello'), 'a.jpg'), {
    ok: false,
    status: 415,
    code: 'unsupported_type',
  });
  t.match(checkUploadHead(Buffer.from([0xff, 0xd8, 0xff, 0xe0]), 'a.png'), {
    ok: false,
    code: 'extension_mismatch',
  });
  t.same(checkUploadHead(Buffer.from([0xff, 0xd8, 0xff, 0xe0]), 'a.jpeg'), { ok: true, kind: 'jpeg' });
});
