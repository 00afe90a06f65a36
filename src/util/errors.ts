// Errors that reach a user. `UserError` carries one clear sentence; anything
// else that escapes is a bug and is reported with its stack in the log.

export class UserError extends Error {
  constructor(message: string, readonly code: string = 'EINVAL', readonly httpStatus = 400) {
    super(message);
    this.name = 'UserError';
  }
}

export class NotFoundError extends UserError {
  constructor(message: string) {
    super(message, 'ENOENT', 404);
  }
}

export class ConflictError extends UserError {
  constructor(message: string) {
    super(message, 'EEXIST', 409);
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Assert an invariant in production code: a failure is a bug, never user input. */
export function invariant(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`invariant violated: ${message}`);
}

/** This node no longer owns the volume at the epoch it acted under: another owner (or epoch) took over. */
export class FencedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FencedError';
  }
}
