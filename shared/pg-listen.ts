// A LISTEN connection that says when it can be trusted. postgres.js's own `sql.listen` re-listens after a
// reconnect but never tells when the connection was gone (notifications sent meanwhile are lost for
// good), and gives up for good when the first re-listen fails; a cache invalidated by NOTIFY must know
// both. So this keeps its own one-connection client: `up` once every channel is listened to, `down` as
// soon as the connection closes or stops answering, then reconnects with backoff and is `up` again.
import postgres from 'postgres';
import { errorMessage } from './errors.js';
import type { Logger } from './logger.js';

export interface ListenHandlers {
  notify(channel: string, payload: string): void;
  /** Every channel is listened to: notifications committed from now on arrive. */
  up(): void;
  /** The connection is gone or does not answer: notifications may have been lost since the last `up`. */
  down(reason: string): void;
}

export interface Listening {
  close(): Promise<void>;
}

/**
 * How often the connection is asked `select 1`, and how long it may take: a half-open TCP connection
 * (peer gone without a FIN) only fails after the kernel's keepalive (minutes), and notifications would be
 * lost silently until then. 5 s + 3 s bounds that to ~8 s.
 */
const HEARTBEAT_MS = 5_000;
const HEARTBEAT_TIMEOUT_MS = 3_000;

export const LISTEN_APPLICATION_NAME = 'pixelfox-listen';
/** The connection of the projection watch (../shared/projection-watch.ts). */
export const WATCH_APPLICATION_NAME = 'pixelfox-watch';

const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;

export function listenReliably(
  url: string,
  channels: readonly string[],
  h: ListenHandlers,
  log: Logger,
  applicationName = LISTEN_APPLICATION_NAME,
): Listening {
  let gen = 0;
  let retries = 0;
  let closed = false;
  let up = false;
  let client: postgres.Sql | null = null;
  let retry: NodeJS.Timeout | undefined;
  const statement = channels.map((c) => `listen ${quoteIdent(c)}`).join('; ');

  const connect = () => {
    if (closed) return;
    const mine = ++gen;
    // `onnotify` is what postgres.js's own listen() uses; its type declarations leave it out.
    const options: postgres.Options<Record<string, never>> & {
      onnotify(channel: string, payload: string): void;
    } = {
      max: 1,
      idle_timeout: 0,
      // The connection lives as long as it works: every new one means a cache flush.
      max_lifetime: null,
      connect_timeout: 5,
      fetch_types: false,
      onnotice: () => {},
      onnotify: (channel, payload) => {
        if (mine === gen) h.notify(channel, payload);
      },
      onclose: () => lost(mine, 'connection closed'),
      connection: { application_name: applicationName },
    };
    const c = postgres(url, options);
    client = c;
    c.unsafe(statement).then(
      () => {
        if (mine !== gen || closed) return;
        retries = 0;
        up = true;
        h.up();
      },
      (err: unknown) => lost(mine, errorMessage(err)),
    );
  };

  /** Drops the client of generation `which` (callbacks of older clients are ignored) and reconnects. */
  const lost = (which: number, reason: string) => {
    if (which !== gen || closed) return;
    gen++;
    if (up) log.warn({ reason }, 'LISTEN connection lost; read caches bypassed until it is back');
    up = false;
    h.down(reason);
    void client?.end({ timeout: 0 }).catch(() => undefined);
    client = null;
    // Doubles from 0.1 s up to 2 s, like the main pool (shared/db.ts).
    retry = setTimeout(connect, Math.min(100 * 2 ** retries++, 2_000));
  };

  const heartbeat = setInterval(() => {
    const c = client;
    const mine = gen;
    if (!up || !c) return;
    let timer: NodeJS.Timeout | undefined;
    Promise.race([
      c`select 1`,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('heartbeat timed out')), HEARTBEAT_TIMEOUT_MS);
      }),
    ])
      .catch((err: unknown) => lost(mine, errorMessage(err)))
      .finally(() => clearTimeout(timer));
  }, HEARTBEAT_MS);
  heartbeat.unref();

  connect();
  return {
    close: async () => {
      closed = true;
      up = false;
      clearInterval(heartbeat);
      clearTimeout(retry);
      await client?.end({ timeout: 1 }).catch(() => undefined);
      client = null;
    },
  };
}
