// One pino root; services take child loggers ({ service, nodeId, consumer }).
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level: string, base: Record<string, unknown> = {}): Logger {
  return pino({
    level,
    base: { pid: process.pid, ...base },
    // Credentials never reach the logs, wherever they appear in a logged object.
    redact: {
      paths: [
        'req.headers.authorization',
        'req.headers["x-api-key"]',
        '*.s3_secret_key',
        '*.s3_access_key',
        '*.secretKey',
        '*.accessKey',
        '*.token',
      ],
      censor: '[redacted]',
    },
  });
}
