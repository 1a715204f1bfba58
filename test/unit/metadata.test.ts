import { readdir } from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { extractMetadata, metadataFromBlocks, toJsonSafe } from '../../services/variants/metadata.js';

const FIXTURES = path.resolve(import.meta.dirname, '../../../shared/fixtures/exif-samples/jpg');
const fixture = (rel: string): string => path.join(FIXTURES, rel);

/** The record survives the trip into an event / jsonb column unchanged, with no NUL characters. */
function assertJsonSafe(t: Tap, value: unknown, label: string): void {
  const json = JSON.stringify(value);
  t.same(JSON.parse(json), value, `${label}: JSON round trip is lossless`);
  t.notOk(json.includes('\\u0000'), `${label}: no NUL (jsonb rejects it)`);
  t.ok(json.length < 64 * 1024, `${label}: ${json.length} bytes of JSON`);
}
/** The assertions the helpers use (a tap Test satisfies it). */
interface Tap {
  ok(value: unknown, message: string): boolean;
  notOk(value: unknown, message: string): boolean;
  equal(found: unknown, wanted: unknown, message: string): boolean;
  same(found: unknown, wanted: unknown, message: string): boolean;
}

t.test('GPS photos give latitude and longitude', async (t) => {
  const files = (await readdir(fixture('gps'))).filter((f) => f.endsWith('.jpg'));
  t.ok(files.length >= 9);
  for (const f of files) {
    const m = await extractMetadata(fixture(`gps/${f}`));
    t.ok(m.gps, `${f}: has a position`);
    if (!m.gps) continue;
    // the Nikon set was shot in Tuscany, near 43.47 N, 11.88 E
    t.ok(Math.abs(m.gps.latitude - 43.467) < 0.01, `${f}: latitude ${m.gps.latitude}`);
    t.ok(Math.abs(m.gps.longitude - 11.882) < 0.01, `${f}: longitude ${m.gps.longitude}`);
    t.equal(m.make, 'NIKON');
    t.equal(m.model, 'COOLPIX P6000');
    assertJsonSafe(t, m, f);
  }
  const first = await extractMetadata(fixture('gps/DSCN0010.jpg'));
  t.same(first.gps, { latitude: 43.4674483, longitude: 11.8851267, altitude: null });
  t.equal(first.takenAt, '2008-10-22T16:28:39');
  t.equal(first.iso, 64);
  t.equal(first.fNumber, 5.9);
  t.equal(first.focalLength, 24);
  t.equal(first.exif.GPSMapDatum, 'WGS-84', 'raw GPS tags are kept in the exif record');
});

t.test('southern hemisphere: the S reference makes latitude negative', async (t) => {
  const m = await extractMetadata(fixture('Kodak_CX7530.jpg'));
  t.ok(m.gps && m.gps.latitude < 0, `latitude ${m.gps?.latitude}`);
  t.ok(m.gps && m.gps.longitude > 36 && m.gps.longitude < 37, `longitude ${m.gps?.longitude}`);
});

t.test('camera files give make, model and exposure', async (t) => {
  const expected: [string, string, string][] = [
    ['Canon_40D.jpg', 'Canon', 'Canon EOS 40D'],
    ['Nikon_D70.jpg', 'NIKON CORPORATION', 'NIKON D70'],
    ['Pentax_K10D.jpg', 'PENTAX Corporation', 'PENTAX K10D'],
    ['Olympus_C8080WZ.jpg', 'OLYMPUS CORPORATION', 'C8080WZ'],
    ['mobile/jolla.jpg', 'Jolla', 'Jolla'],
    ['exif-org/fujifilm-dx10.jpg', 'FUJIFILM', 'DX-10'],
  ];
  for (const [file, make, model] of expected) {
    const m = await extractMetadata(fixture(file));
    t.equal(m.make, make, `${file}: make`);
    t.equal(m.model, model, `${file}: model`);
    assertJsonSafe(t, m, file);
  }
  const canon = await extractMetadata(fixture('Canon_40D.jpg'));
  t.same(
    {
      takenAt: canon.takenAt,
      iso: canon.iso,
      fNumber: canon.fNumber,
      exposureTime: canon.exposureTime,
      focalLength: canon.focalLength,
    },
    { takenAt: '2008-05-30T15:56:01', iso: 100, fNumber: 7.1, exposureTime: 0.00625, focalLength: 135 },
  );
  t.equal((await extractMetadata(fixture('Nikon_D70.jpg'))).lens, '100.0 mm f/2.8', 'lens from XMP aux:Lens');
});

t.test('orientation is the EXIF number', async (t) => {
  for (let o = 1; o <= 8; o++) {
    t.equal((await extractMetadata(fixture(`orientation/landscape_${o}.jpg`))).orientation, o);
  }
});

t.test('XMP dates keep their offset', async (t) => {
  t.equal((await extractMetadata(fixture('xmp/BlueSquare.jpg'))).takenAt, '2005-09-07T15:07:40-07:00');
  const m = await extractMetadata(fixture('invalid/image00971.jpg'));
  t.equal(m.takenAt, '2010-04-13T09:37:22+02:00');
});

t.test('broken, absent or unsupported metadata gives nulls without throwing', async (t) => {
  const invalid = (await readdir(fixture('invalid')))
    .filter((f) => f.endsWith('.jpg'))
    .map((f) => `invalid/${f}`);
  for (const file of ['corrupted.jpg', 'exif-org/olympus-d320l.jpg', ...invalid]) {
    const m = await extractMetadata(fixture(file));
    t.ok(m, `${file}: resolved`);
    assertJsonSafe(t, m, file);
  }
  const noExif = await extractMetadata(fixture('exif-org/sony-powershota5.jpg'));
  t.same(
    { ...noExif, exif: undefined },
    {
      make: null,
      model: null,
      lens: null,
      takenAt: null,
      iso: null,
      fNumber: null,
      exposureTime: null,
      focalLength: null,
      orientation: null,
      gps: null,
      exif: undefined,
    },
  );

  const dir = t.testdir({
    'text.jpg': 'this is not a jpeg at all',
    'empty.jpg': '',
    'plain.png': await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } })
      .png()
      .toBuffer(),
    'plain.gif': await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } })
      .gif()
      .toBuffer(),
    'truncated.jpg': (await sharp(fixture('gps/DSCN0010.jpg')).toBuffer()).subarray(0, 100),
  });
  for (const name of ['text.jpg', 'empty.jpg', 'plain.png', 'plain.gif', 'truncated.jpg', 'missing.jpg']) {
    const m = await extractMetadata(path.join(dir, name));
    t.equal(m.make, null, `${name}: make null`);
    t.equal(m.gps, null, `${name}: gps null`);
    assertJsonSafe(t, m, name);
  }
});

t.test('exif record: every fixture is JSON-safe and binary blobs are gone', async (t) => {
  const walk = async (dir: string): Promise<string[]> => {
    const out: string[] = [];
    for (const e of await readdir(dir, { withFileTypes: true })) {
      if (e.isDirectory()) out.push(...(await walk(path.join(dir, e.name))));
      else if (e.name.endsWith('.jpg')) out.push(path.join(dir, e.name));
    }
    return out;
  };
  for (const file of await walk(FIXTURES)) {
    const m = await extractMetadata(file);
    assertJsonSafe(t, m.exif, path.relative(FIXTURES, file));
  }
});

t.test('pure mapping: GPS edge cases and dates', async (t) => {
  const base = { ifd0: { Make: 'X\u0000', Model: '  Y  ' } };
  const m = metadataFromBlocks({
    ...base,
    exif: {
      DateTimeOriginal: '2021:07:04 09:08:07',
      OffsetTimeOriginal: '+05:30',
      SubSecTimeOriginal: '25',
      ISO: [400, 0],
    },
    gps: {
      GPSLatitude: [33, 51, 36],
      GPSLatitudeRef: 'S',
      GPSLongitude: [151, 12, 36],
      GPSLongitudeRef: 'E',
      GPSAltitude: 12.5,
      GPSAltitudeRef: new Uint8Array([1]),
    },
  });
  t.equal(m.make, 'X', 'NUL stripped');
  t.equal(m.model, 'Y', 'trimmed');
  t.equal(m.takenAt, '2021-07-04T09:08:07.250+05:30');
  t.equal(m.iso, 400, 'ISO as an array');
  t.same(m.gps, { latitude: -33.86, longitude: 151.21, altitude: -12.5 });
  t.equal(m.exif.GPSAltitudeRef, 1, 'one byte becomes a number');

  t.equal(
    metadataFromBlocks({ gps: { GPSLatitude: [0, 0, 0], GPSLongitude: [0, 0, 0] } }).gps,
    null,
    'no fix (0,0)',
  );
  t.equal(
    metadataFromBlocks({ gps: { GPSLatitude: [95, 0, 0], GPSLongitude: [10, 0, 0] } }).gps,
    null,
    'out of range',
  );
  t.equal(metadataFromBlocks({ gps: { GPSLatitude: [45, 0, 0] } }).gps, null, 'longitude missing');
  t.equal(
    metadataFromBlocks({ exif: { DateTimeOriginal: '0000:00:00 00:00:00' } }).takenAt,
    null,
    'zero date',
  );
  t.equal(
    metadataFromBlocks({ exif: { DateTimeOriginal: '    :  :     :  :  ' } }).takenAt,
    null,
    'blank date',
  );
  t.equal(
    metadataFromBlocks({ exif: { CreateDate: '2001:02:03 04:05:06' } }).takenAt,
    '2001-02-03T04:05:06',
    'digitized fallback',
  );
  t.equal(metadataFromBlocks({ ifd0: { Orientation: 9 } }).orientation, null, 'invalid orientation');
  t.same(metadataFromBlocks(undefined).exif, {});
});

t.test('toJsonSafe', async (t) => {
  const big = new Uint8Array(5000);
  const safe = toJsonSafe({
    ascii: new Uint8Array([0x30, 0x32, 0x32, 0x30]),
    bytes: new Uint8Array([1, 2, 3, 0]),
    blob: big,
    date: new Date('2020-01-02T03:04:05Z'),
    nan: Number.NaN,
    inf: Number.POSITIVE_INFINITY,
    big: 12n,
    fn: () => 1,
    long: 'x'.repeat(10_000),
    nested: { a: [1, undefined, 'b\u0000'] },
  });
  t.same(safe, {
    ascii: '0220',
    bytes: [1, 2, 3, 0],
    date: '2020-01-02T03:04:05.000Z',
    big: 12,
    long: 'x'.repeat(2000),
    nested: { a: [1, 'b'] },
  });
});
