// Small primitives for comparing and minting secrets. Everything here uses the crypto RNG and
// constant-time comparison; nothing may branch on secret bytes.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Constant-time string equality (UTF-8). Both sides are hashed first so that the comparison is
 * always over 32 bytes: neither the content nor the length of the expected secret leaks through timing.
 */
export function safeEqual(a: string, b: string): boolean {
  const ha = createHash('sha256').update(a, 'utf8').digest();
  const hb = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(ha, hb);
}

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
// Largest multiple of 62 that fits a byte: bytes at or above it are discarded so `b % 62` is uniform.
const BASE62_CUTOFF = 248;

/** `n` characters of [0-9A-Za-z] from the crypto RNG, without modulo bias (rejection sampling). */
export function randomBase62(n: number): string {
  if (!Number.isSafeInteger(n) || n < 1 || n > 4096)
    throw new RangeError(`randomBase62: length must be 1..4096, got ${n}`);
  let out = '';
  while (out.length < n) {
    // ~3% of bytes are rejected; over-draw a little so one round almost always suffices.
    const bytes = randomBytes(n - out.length + 8);
    for (const b of bytes) {
      if (b >= BASE62_CUTOFF) continue;
      out += BASE62.charAt(b % 62);
      if (out.length === n) break;
    }
  }
  return out;
}

/** 32 random bytes as base64url (43 characters): the shape of every generated server secret. */
export function randomSecret(): string {
  return randomBytes(32).toString('base64url');
}
