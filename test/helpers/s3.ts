// A real S3 endpoint for tests: s3rver (the S3 REST protocol over HTTP) on a free loopback port, with
// its data in a fresh temp directory. stop()/start() simulate an S3 outage: while stopped, connections
// to the port are refused; after start() the same port serves the same data again.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import S3rver from 's3rver';
import type { S3PoolConfig } from '../../shared/s3/client.js';

export interface S3Harness {
  endpoint: string;
  port: number;
  bucket: string;
  accessKey: string;
  secretKey: string;
  config(): S3PoolConfig;
  /** server down, data kept */
  stop(): Promise<void>;
  /** same port again */
  start(): Promise<void>;
  /** stop + remove temp dir */
  close(): Promise<void>;
  listKeys(prefix?: string): Promise<string[]>;
  /** every request the server received, as `METHOD /path?query`, oldest first */
  requests(): readonly string[];
}

// s3rver's built-in account (see its README); it rejects any other access key.
const ACCESS_KEY = 'S3RVER';
const SECRET_KEY = 'S3RVER';
const ADDRESS = '127.0.0.1';

export async function startS3(opts: { bucket?: string } = {}): Promise<S3Harness> {
  // Unique per harness so parallel test files never share a bucket.
  const bucket = opts.bucket ?? `pixelfox-test-${randomBytes(4).toString('hex')}`;
  const directory = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-s3-'));
  const log: string[] = [];
  let port = 0; // 0 on the first start only; restarts reuse the bound port
  let server: S3rver | null = null;
  let closed = false;

  const start = async (): Promise<void> => {
    if (closed) throw new Error('S3 harness is closed');
    if (server !== null) return;
    const s = new S3rver({
      address: ADDRESS,
      port,
      silent: true,
      directory,
      configureBuckets: [{ name: bucket }],
    });
    const address = await s.run();
    port = address.port;
    s.httpServer?.on('request', (req) => {
      log.push(`${req.method ?? '?'} ${req.url ?? '?'}`);
    });
    server = s;
  };

  const stop = async (): Promise<void> => {
    const s = server;
    if (s === null) return;
    server = null;
    const closing = s.close();
    // close() alone waits for clients' keep-alive sockets; drop them so the outage is immediate.
    s.httpServer?.closeAllConnections();
    await closing;
  };

  await start();
  const endpoint = `http://${ADDRESS}:${port}`;
  const config = (): S3PoolConfig => ({
    bucket,
    region: 'us-east-1',
    endpoint,
    accessKey: ACCESS_KEY,
    secretKey: SECRET_KEY,
    forcePathStyle: true,
  });
  // A private client (not the product's cache) so listing never shares sockets with the code under test.
  const lister = new S3Client({
    region: 'us-east-1',
    endpoint,
    forcePathStyle: true,
    credentials: { accessKeyId: ACCESS_KEY, secretAccessKey: SECRET_KEY },
    maxAttempts: 1,
  });

  return {
    endpoint,
    port,
    bucket,
    accessKey: ACCESS_KEY,
    secretKey: SECRET_KEY,
    config,
    stop,
    start,
    async close() {
      await stop();
      closed = true;
      lister.destroy();
      await rm(directory, { recursive: true, force: true });
    },
    async listKeys(prefix?: string) {
      const keys: string[] = [];
      let token: string | undefined;
      do {
        const out = await lister.send(
          new ListObjectsV2Command({
            Bucket: bucket,
            ...(prefix !== undefined ? { Prefix: prefix } : {}),
            ...(token !== undefined ? { ContinuationToken: token } : {}),
          }),
        );
        for (const o of out.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key);
        token = out.IsTruncated === true ? out.NextContinuationToken : undefined;
      } while (token !== undefined);
      return keys.sort();
    },
    requests: () => log,
  };
}
