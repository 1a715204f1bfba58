// Upload tokens: the API signs `{ user_id, pool_id, max_bytes, exp, jti }` with HMAC-SHA256 and the
// storage node verifies it before accepting a byte. Not a JWT: one algorithm, no header, nothing to negotiate.
//
//   token = base64url(JSON claims) + '.' + base64url(HMAC-SHA256(secret, base64url(JSON claims)))
//
// The MAC covers the encoded text exactly as sent, so verification never depends on re-serialising JSON,
// and the signature is checked before the payload is parsed.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export interface UploadClaims {
  user_id: string;
  pool_id: string;
  /** upper bound on the upload body, bytes */
  max_bytes: number;
  /** expiry, unix seconds; the token is refused from this second on */
  exp: number;
  /** random token id, for logs and (optionally) single-use bookkeeping */
  jti: string;
}

export type VerifyResult =
  | { ok: true; claims: UploadClaims }
  | { ok: false; reason: 'missing' | 'malformed' | 'bad_signature' | 'expired' | 'wrong_pool' };

/** Default validity of an upload token (the architecture document's 30 minutes). */
export const DEFAULT_UPLOAD_TOKEN_TTL_SECONDS = 30 * 60;
/** Anything longer is refused before any work: real tokens are ~250 characters. */
export const MAX_UPLOAD_TOKEN_LENGTH = 2048;
/** Same floor as the configuration's check on UPLOAD_TOKEN_SECRET. */
export const MIN_SECRET_LENGTH = 16;
/** Bound on id fields so a signed token stays well under MAX_UPLOAD_TOKEN_LENGTH. */
const MAX_ID_LENGTH = 256;

const MAC_BYTES = 32;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

function mac(secret: string, payload: string): Buffer {
  return createHmac('sha256', secret).update(payload, 'ascii').digest();
}

function assertSecret(secret: string): void {
  // A short or empty key is a configuration bug; refusing loudly beats issuing forgeable tokens.
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw new TypeError(`upload token secret must be at least ${MIN_SECRET_LENGTH} characters`);
  }
}

function isId(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= MAX_ID_LENGTH;
}

function isPositiveSafeInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
}

/** Strict base64url: only the URL-safe alphabet, no padding, and canonical (re-encodes to itself). */
function decodeBase64Url(s: string): Buffer | null {
  if (!BASE64URL.test(s)) return null;
  const buf = Buffer.from(s, 'base64url');
  // Node's decoder ignores stray trailing bits; requiring a round trip makes every token have one spelling.
  return buf.toString('base64url') === s ? buf : null;
}

function parseClaims(json: string): UploadClaims | null {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const o = value as Record<string, unknown>;
  const { user_id, pool_id, max_bytes, exp, jti } = o;
  if (!isId(user_id) || !isId(pool_id) || !isId(jti)) return null;
  if (!isPositiveSafeInt(max_bytes) || !isPositiveSafeInt(exp)) return null;
  // Unknown extra fields are ignored (a newer signer may add optional ones); only known ones are returned.
  return { user_id, pool_id, max_bytes, exp, jti };
}

export function signUploadToken(
  secret: string,
  claims: Omit<UploadClaims, 'jti' | 'exp'> & { exp?: number },
  now: Date = new Date(),
  ttlSeconds: number = DEFAULT_UPLOAD_TOKEN_TTL_SECONDS,
): { token: string; claims: UploadClaims } {
  assertSecret(secret);
  if (!isId(claims.user_id) || !isId(claims.pool_id)) {
    throw new TypeError(
      `user_id and pool_id must be non-empty strings of at most ${MAX_ID_LENGTH} characters`,
    );
  }
  if (!isPositiveSafeInt(claims.max_bytes)) throw new TypeError('max_bytes must be a positive safe integer');
  if (!isPositiveSafeInt(ttlSeconds)) throw new TypeError('ttlSeconds must be a positive safe integer');
  const exp = claims.exp ?? Math.floor(now.getTime() / 1000) + ttlSeconds;
  if (!isPositiveSafeInt(exp)) throw new TypeError('exp must be a positive safe integer (unix seconds)');

  // Fixed key order keeps tokens for equal claims byte-identical apart from jti.
  const full: UploadClaims = {
    user_id: claims.user_id,
    pool_id: claims.pool_id,
    max_bytes: claims.max_bytes,
    exp,
    jti: randomBytes(16).toString('base64url'),
  };
  const payload = Buffer.from(JSON.stringify(full), 'utf8').toString('base64url');
  const token = `${payload}.${mac(secret, payload).toString('base64url')}`;
  return { token, claims: full };
}

export function verifyUploadToken(
  secret: string,
  token: string | undefined,
  opts: { now?: Date; poolIds?: ReadonlySet<string> } = {},
): VerifyResult {
  assertSecret(secret);
  if (token === undefined || token === '') return { ok: false, reason: 'missing' };
  if (typeof token !== 'string' || token.length > MAX_UPLOAD_TOKEN_LENGTH)
    return { ok: false, reason: 'malformed' };

  const parts = token.split('.');
  if (parts.length !== 2) return { ok: false, reason: 'malformed' };
  const [payload, sigText] = parts as [string, string];
  const payloadBytes = decodeBase64Url(payload);
  const sig = decodeBase64Url(sigText);
  if (payloadBytes === null || sig === null) return { ok: false, reason: 'malformed' };

  // Authenticate before interpreting anything the client sent. The length check comes first because
  // timingSafeEqual requires equal lengths; the length of a MAC is public, so that branch leaks nothing.
  const expected = mac(secret, payload);
  if (sig.length !== MAC_BYTES || !timingSafeEqual(sig, expected))
    return { ok: false, reason: 'bad_signature' };

  const claims = parseClaims(payloadBytes.toString('utf8'));
  if (claims === null) return { ok: false, reason: 'malformed' };

  const nowSeconds = Math.floor((opts.now ?? new Date()).getTime() / 1000);
  if (nowSeconds >= claims.exp) return { ok: false, reason: 'expired' };
  if (opts.poolIds !== undefined && !opts.poolIds.has(claims.pool_id))
    return { ok: false, reason: 'wrong_pool' };
  return { ok: true, claims };
}
