// A small coded error hierarchy: every expected failure has an HTTP status and a stable code, mapped to
// the one JSON error shape `{ "error": { "code", "message", "details?" } }` in one place (services/http).
export class AppError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
    readonly headers?: Record<string, string>,
  ) {
    super(message);
    this.name = 'AppError';
  }
}

export const badRequest = (code: string, message: string, details?: unknown) =>
  new AppError(400, code, message, details);
export const unauthorized = (code: string, message: string) => new AppError(401, code, message);
export const forbidden = (code: string, message: string) => new AppError(403, code, message);
export const notFound = (message = 'not found') => new AppError(404, 'not_found', message);
export const conflict = (code: string, message: string) => new AppError(409, code, message);
export const payloadTooLarge = (code: string, message: string, details?: unknown) =>
  new AppError(413, code, message, details);
export const unsupportedMedia = (code: string, message: string) => new AppError(415, code, message);
export const unprocessable = (code: string, message: string, details?: unknown) =>
  new AppError(422, code, message, details);
export const tooManyRequests = (message: string, retryAfterSeconds: number) =>
  new AppError(429, 'rate_limited', message, undefined, { 'retry-after': String(retryAfterSeconds) });
export const unavailable = (code: string, message: string) => new AppError(503, code, message);

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
