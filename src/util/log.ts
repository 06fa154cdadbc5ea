import { pino, type Logger, type LoggerOptions } from 'pino';

/** Paths pino replaces with "[redacted]" wherever they appear in a log object. */
export const REDACT_PATHS = [
  'password', '*.password', '*.*.password',
  'token', '*.token', '*.*.token', 'credential', '*.credential', '*.*.credential',
  'code', '*.code', 'activationCode', '*.activationCode',
  'cookie', '*.cookie', 'headers.cookie', '*.headers.cookie', 'headers.authorization', '*.headers.authorization',
  'authorization', '*.authorization', 'proxyAuth', '*.proxyAuth', 'secret', '*.secret',
];

export interface LogSettings {
  level?: string;
  /** Write to this file descriptor (default 2: stderr, so stdout stays for command output). */
  fd?: number;
  /** Or to this file path. */
  file?: string;
  /** Or to a rotated file (pino-roll, in a worker thread): `<base>.<n>.log`, daily or at `size`, keeping `keep` files. */
  rotate?: { base: string; size?: string; keep?: number };
}

export function createLogger(settings: LogSettings = {}, bindings: Record<string, unknown> = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? process.env.VMLIFT_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { pid: process.pid, ...bindings },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (settings.rotate) {
    const transport = pino.transport({
      target: 'pino-roll',
      options: {
        file: settings.rotate.base, extension: '.log', frequency: 'daily', size: settings.rotate.size ?? '20m',
        mkdir: true, limit: { count: settings.rotate.keep ?? 10 },
      },
    });
    return pino(options, transport);
  }
  const dest = settings.file
    ? pino.destination({ dest: settings.file, mkdir: true, sync: false })
    : pino.destination({ fd: settings.fd ?? 2, sync: true });
  return pino(options, dest);
}

/** A logger that drops everything: the default for library code when the caller passes none. */
export const silentLogger: Logger = pino({ level: 'silent' });

export type { Logger };
