// Minimal types for s3rver 3.x (CommonJS, `module.exports = S3rver`), covering what test/helpers/s3.ts uses.
declare module 's3rver' {
  import type { EventEmitter } from 'node:events';
  import type { Server } from 'node:http';
  import type { AddressInfo } from 'node:net';

  namespace S3rver {
    interface BucketConfig {
      name: string;
      /** raw CORS / website configuration XML */
      configs?: (string | Buffer)[];
    }
    interface Options {
      address?: string;
      /** 0 picks a free port; run() resolves with the bound address */
      port?: number;
      silent?: boolean;
      serviceEndpoint?: string;
      directory?: string;
      resetOnClose?: boolean;
      allowMismatchedSignatures?: boolean;
      vhostBuckets?: boolean;
      configureBuckets?: BucketConfig[];
    }
  }

  class S3rver extends EventEmitter {
    constructor(options?: S3rver.Options);
    /** Creates the configured buckets and starts listening. */
    run(): Promise<AddressInfo>;
    /** Stops listening; resolves once every connection has closed. */
    close(): Promise<void>;
    reset(): void;
    /** Set by run(). */
    httpServer?: Server;
  }

  export = S3rver;
}
