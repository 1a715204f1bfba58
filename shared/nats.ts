// The NATS connection and the JetStream handles every service shares.
import { connect } from '@nats-io/transport-node';
import type { ConnectionOptions, NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { Logger } from './logger.js';

export interface Nats {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** false from a disconnect until the reconnect: callers refuse work at once instead of timing out */
  connected(): boolean;
}

/** The connection options every service uses (also used by the publish benchmark, on both sides). */
export function natsConnectOptions(url: string, name: string): ConnectionOptions {
  return {
    servers: url.split(','),
    name,
    // Reconnect forever: a NATS restart must never take a service down.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    pingInterval: 10_000,
    timeout: 5_000,
    // By default nats.js builds two Error objects (stack traces) for every request, to give a timeout
    // the caller's stack; that was ~25 % of the client CPU of a JetStream publish (bench/publish.ts
    // profile). Our errors are logged with the subject and the operation, not the async stack.
    noAsyncTraces: true,
  };
}

export async function connectNats(url: string, log: Logger, name: string): Promise<Nats> {
  const nc = await connect(natsConnectOptions(url, name));
  let connected = true;
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') connected = false;
      else if (s.type === 'reconnect') connected = true;
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error')
        log.warn({ status: s.type }, 'nats status');
    }
  })();
  // A short publish timeout so an upload during a NATS outage fails fast (503) instead of hanging.
  const js = jetstream(nc, { timeout: 5_000 });
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  return { nc, js, jsm, connected: () => connected && !nc.isClosed() };
}
