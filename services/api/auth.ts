// API-key authentication (Authorization: Bearer <key> or X-API-Key) and the admin token.
import type { FastifyRequest } from 'fastify';
import { unauthorized } from '../../shared/errors.js';
import { safeEqual } from '../../shared/security/secrets.js';
import { userByApiKey, type User } from '../../shared/users.js';
import type { Ctx } from '../context.js';
import type { ReadCache } from './read-cache.js';

export function presentedKey(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (typeof h === 'string' && /^bearer /i.test(h)) return h.slice(7).trim();
  const x = req.headers['x-api-key'];
  return typeof x === 'string' ? x.trim() : undefined;
}

export async function optionalUser(ctx: Ctx, req: FastifyRequest): Promise<User | null> {
  const key = presentedKey(req);
  if (!key) return null;
  return known(await userByApiKey(ctx.sql, key));
}

/**
 * optionalUser through the read API's cache (./read-cache.ts, told of revocations and user changes by
 * NOTIFY): a cached key is answered without a promise.
 */
export function optionalUserCached(
  ctx: Ctx,
  req: FastifyRequest,
  cache: ReadCache,
): User | null | Promise<User | null> {
  const key = presentedKey(req);
  if (!key) return null;
  const user = cache.user(key, () => userByApiKey(ctx.sql, key));
  return user instanceof Promise ? user.then(known) : known(user);
}

function known(user: User | null): User {
  if (!user) throw unauthorized('invalid_api_key', 'API key unknown or revoked');
  return user;
}

export async function requireUser(ctx: Ctx, req: FastifyRequest): Promise<User> {
  const user = await optionalUser(ctx, req);
  if (!user)
    throw unauthorized('missing_api_key', 'send your API key as Authorization: Bearer <key> or X-API-Key');
  return user;
}

export function requireAdmin(ctx: Ctx, req: FastifyRequest): void {
  const h = req.headers.authorization;
  const token = typeof h === 'string' && /^bearer /i.test(h) ? h.slice(7).trim() : '';
  if (!token || !ctx.config.adminToken || !safeEqual(token, ctx.config.adminToken)) {
    throw unauthorized('invalid_admin_token', 'send the admin token as Authorization: Bearer <ADMIN_TOKEN>');
  }
}
