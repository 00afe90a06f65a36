// One logger for the whole agent. pino writes JSON lines; the launcher sends
// each agent's stderr to its own log file, so logs go to stderr (fd 2).
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(name: string, level: string = process.env.CIO_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}

/** A logger that drops everything: for tests and short-lived CLI code paths. */
export const silentLogger: Logger = pino({ level: 'silent' });
