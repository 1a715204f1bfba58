// EXIF/GPS/XMP extraction for the ImageMetadataExtracted event. exifr reads the file; everything
// after that is a pure mapping from exifr's blocks to a typed, JSON-safe record.
//
// Values are read raw (translateValues: false, reviveValues: false): numbers stay EXIF codes
// (Orientation 6, not "Rotate 90 CW") so the record is stable across exifr versions, and dates stay the
// camera's strings, so no process time zone is guessed into them.
import exifr from 'exifr';

export interface GpsPosition {
  latitude: number;
  longitude: number;
  /** metres above sea level (negative below), null when absent */
  altitude: number | null;
}

export interface ImageMetadata {
  make: string | null;
  model: string | null;
  lens: string | null;
  /** ISO 8601; with the offset when the file records one (EXIF 2.31 OffsetTime*), else local time */
  takenAt: string | null;
  iso: number | null;
  fNumber: number | null;
  /** seconds */
  exposureTime: number | null;
  /** millimetres */
  focalLength: number | null;
  orientation: number | null;
  gps: GpsPosition | null;
  /** TIFF/EXIF/GPS tags flattened by name, XMP namespaces under `xmp`; JSON-safe (see toJsonSafe).
   * An empty object when the file has no metadata. */
  exif: Record<string, unknown>;
}

export const EMPTY_METADATA: Readonly<ImageMetadata> = Object.freeze({
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
  exif: {},
});

const EXIFR_OPTIONS = {
  tiff: true,
  exif: true,
  gps: true,
  xmp: true,
  ifd1: false,
  interop: false,
  icc: false,
  iptc: false,
  jfif: false,
  ihdr: false,
  makerNote: false,
  userComment: false,
  mergeOutput: false,
  translateKeys: true,
  translateValues: false,
  reviveValues: false,
  sanitize: true,
};

/** exifr blocks that are TIFF IFDs; every other object-valued block is an XMP namespace. */
const TIFF_BLOCKS = ['ifd0', 'exif', 'gps'] as const;
const SKIPPED_BLOCKS = new Set(['ifd1', 'interop', 'thumbnail', 'makerNote', 'userComment']);

/** Never throws: broken, absent or unsupported metadata (BMP, GIF, WebP) gives EMPTY_METADATA's nulls. */
export async function extractMetadata(absPath: string): Promise<ImageMetadata> {
  let parsed: unknown;
  try {
    parsed = await exifr.parse(absPath, EXIFR_OPTIONS);
  } catch {
    return { ...EMPTY_METADATA, exif: {} };
  }
  return metadataFromBlocks(parsed);
}

/** Pure mapping from exifr's unmerged output (`{ ifd0, exif, gps, <xmp namespaces> }`). */
export function metadataFromBlocks(parsed: unknown): ImageMetadata {
  if (!isRecord(parsed)) return { ...EMPTY_METADATA, exif: {} };
  const block = (name: string): Record<string, unknown> => {
    const b = parsed[name];
    return isRecord(b) ? b : {};
  };
  const ifd0 = block('ifd0');
  const exif = block('exif');
  const gpsBlock = block('gps');
  const xmp: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (!(TIFF_BLOCKS as readonly string[]).includes(key) && !SKIPPED_BLOCKS.has(key) && isRecord(value)) {
      xmp[key] = value;
    }
  }
  const xmpValue = (ns: string, key: string): unknown => {
    const n = xmp[ns];
    return isRecord(n) ? n[key] : undefined;
  };

  const orientation = num(ifd0.Orientation);
  const flat: Record<string, unknown> = { ...ifd0, ...exif, ...gpsBlock };
  if (Object.keys(xmp).length > 0) flat.xmp = xmp;

  return {
    make: str(ifd0.Make),
    model: str(ifd0.Model),
    lens: str(exif.LensModel) ?? str(xmpValue('aux', 'Lens')) ?? str(xmpValue('exifEX', 'LensModel')),
    takenAt:
      exifDateTime(exif.DateTimeOriginal, exif.OffsetTimeOriginal, exif.SubSecTimeOriginal) ??
      exifDateTime(exif.CreateDate, exif.OffsetTimeDigitized, exif.SubSecTimeDigitized) ??
      isoDateTime(xmpValue('exif', 'DateTimeOriginal')) ??
      isoDateTime(xmpValue('photoshop', 'DateCreated')) ??
      isoDateTime(xmpValue('xmp', 'CreateDate')) ??
      isoDateTime(xmpValue('xap', 'CreateDate')),
    iso: positive(num(exif.ISO)),
    fNumber: positive(num(exif.FNumber)),
    exposureTime: positive(num(exif.ExposureTime)),
    focalLength: positive(num(exif.FocalLength)),
    orientation:
      orientation !== null && Number.isInteger(orientation) && orientation >= 1 && orientation <= 8
        ? orientation
        : null,
    gps: gpsFrom(gpsBlock),
    exif: toJsonSafe(flat, 0) as Record<string, unknown>,
  };
}

function gpsFrom(gps: Record<string, unknown>): GpsPosition | null {
  const lat = degrees(gps.GPSLatitude, gps.GPSLatitudeRef, 'S');
  const lon = degrees(gps.GPSLongitude, gps.GPSLongitudeRef, 'W');
  if (lat === null || lon === null) return null;
  if (Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
  // 0,0 is what receivers without a fix write; a photo taken on "Null Island" is not worth the false positives
  if (lat === 0 && lon === 0) return null;
  let altitude = num(gps.GPSAltitude);
  if (altitude !== null && num(gps.GPSAltitudeRef) === 1) altitude = -altitude;
  return {
    latitude: round(lat, 7),
    longitude: round(lon, 7),
    altitude: altitude === null ? null : round(altitude, 2),
  };
}

/** [deg, min, sec] or decimal degrees, negated for the S/W reference. */
function degrees(value: unknown, ref: unknown, negativeRef: 'S' | 'W'): number | null {
  let d: number | null = null;
  if (Array.isArray(value)) {
    const [deg, min = 0, sec = 0] = value.map((v) => num(v));
    if (deg !== null && deg !== undefined && min !== null && sec !== null) d = deg + min / 60 + sec / 3600;
  } else {
    d = num(value);
  }
  if (d === null || !Number.isFinite(d)) return null;
  return str(ref)?.toUpperCase() === negativeRef ? -d : d;
}

const EXIF_DATE = /^(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})/;
const OFFSET = /^([+-])(\d{2}):?(\d{2})$/;

/** 'YYYY:MM:DD HH:MM:SS' + optional '+HH:MM' offset and sub-seconds → ISO 8601. */
function exifDateTime(value: unknown, offset: unknown, subSec: unknown): string | null {
  const s = str(value);
  const m = s === null ? null : EXIF_DATE.exec(s);
  if (!m) return null;
  const [, y, mo, d, h, mi, se] = m.map(Number);
  if (!validDate(y, mo, d, h, mi, se)) return null;
  const p2 = (n: number | undefined): string => String(n).padStart(2, '0');
  let iso = `${m[1]}-${p2(mo)}-${p2(d)}T${p2(h)}:${p2(mi)}:${p2(se)}`;
  const frac = str(subSec);
  if (frac !== null && /^\d+$/.test(frac) && /[1-9]/.test(frac)) iso += `.${frac.slice(0, 3).padEnd(3, '0')}`;
  const off = str(offset);
  const om = off === null ? null : OFFSET.exec(off);
  if (om && Number(om[2]) <= 14 && Number(om[3]) < 60) iso += `${om[1]}${om[2]}:${om[3]}`;
  return iso;
}

/** XMP dates are ISO already ('2005-09-07T15:07:40-07:00', sometimes date only). */
function isoDateTime(value: unknown): string | null {
  const s = str(value);
  if (s === null) return null;
  const full = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$/.exec(s);
  if (full) {
    const [, y, mo, d, h, mi, se = '00', frac = '', zone = ''] = full;
    if (!validDate(...[y, mo, d, h, mi, se].map(Number))) return null;
    return `${y}-${mo}-${d}T${h}:${mi}:${se}${frac.slice(0, 4)}${zone === 'Z' ? '+00:00' : zone}`;
  }
  return null;
}

function validDate(...parts: (number | undefined)[]): boolean {
  const [y, mo, d, h, mi, se] = parts;
  if (
    y === undefined ||
    mo === undefined ||
    d === undefined ||
    h === undefined ||
    mi === undefined ||
    se === undefined
  ) {
    return false;
  }
  return (
    y >= 1800 && y <= 9999 && mo >= 1 && mo <= 12 && d >= 1 && d <= 31 && h <= 23 && mi <= 59 && se <= 60
  );
}

// ---------------------------------------------------------------------------------------------
// JSON safety: the record goes into an event and a Postgres jsonb column.

const MAX_STRING = 2000;
const MAX_ARRAY = 256;
const MAX_KEYS = 500;
const MAX_DEPTH = 6;
const MAX_INLINE_BINARY = 64;

/**
 * Makes a value survive JSON.stringify → JSON.parse unchanged and fit jsonb: binary blobs over 64
 * bytes are dropped (thumbnails, padding, maker notes), small ones become ASCII text or a byte array;
 * Dates become ISO strings; NaN/Infinity and functions are dropped; NUL and other control characters
 * (which jsonb rejects) are removed; long strings and arrays are truncated; nesting is bounded.
 */
export function toJsonSafe(value: unknown, depth = 0): unknown {
  if (value === null || typeof value === 'boolean') return value;
  if (typeof value === 'string') return cleanString(value);
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'bigint')
    return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? undefined : value.toISOString();
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
    const bytes =
      value instanceof ArrayBuffer
        ? new Uint8Array(value)
        : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    if (bytes.length > MAX_INLINE_BINARY) return undefined;
    const printable = bytes.length > 0 && bytes.every((b) => b >= 0x20 && b < 0x7f);
    if (printable) return String.fromCharCode(...bytes);
    return bytes.length === 1 ? bytes[0] : Array.from(bytes);
  }
  if (depth >= MAX_DEPTH) return undefined;
  if (Array.isArray(value)) {
    const out: unknown[] = [];
    for (const item of value.slice(0, MAX_ARRAY)) {
      const safe = toJsonSafe(item, depth + 1);
      if (safe !== undefined) out.push(safe);
    }
    return out;
  }
  if (isRecord(value)) {
    const out: Record<string, unknown> = {};
    let keys = 0;
    for (const [key, item] of Object.entries(value)) {
      if (keys >= MAX_KEYS) break;
      const safe = toJsonSafe(item, depth + 1);
      if (safe === undefined) continue;
      out[cleanString(key)] = safe;
      keys++;
    }
    return out;
  }
  return undefined; // functions, symbols, undefined
}

function cleanString(s: string): string {
  // eslint-disable-next-line no-control-regex
  const cleaned = s.replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g, '').trim();
  // drop lone surrogates left by a cut or a mis-decoded byte sequence
  const wellFormed = cleaned.replace(
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g,
    '',
  );
  return wellFormed.length > MAX_STRING ? wellFormed.slice(0, MAX_STRING) : wellFormed;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

function str(value: unknown): string | null {
  if (typeof value !== 'string') return null;
  const s = cleanString(value);
  return s.length > 0 ? s : null;
}

/** A number from a number, a numeric string, a one-element array (ISO is sometimes [100, 0]) or one byte. */
function num(value: unknown): number | null {
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value === 'string' && value.trim() !== '') {
    const rational = /^(-?\d+(?:\.\d+)?)\/(\d+(?:\.\d+)?)$/.exec(value.trim());
    const n = rational ? Number(rational[1]) / Number(rational[2]) : Number(value);
    return Number.isFinite(n) ? n : null;
  }
  if (Array.isArray(value) && value.length > 0) return num(value[0]);
  if (value instanceof Uint8Array && value.length >= 1) return value[0] ?? null;
  return null;
}

function positive(n: number | null): number | null {
  return n !== null && n > 0 ? n : null;
}

function round(n: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}
