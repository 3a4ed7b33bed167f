import winston from 'winston';

export type Logger = winston.Logger;

export interface LoggerOptions {
  /** The program writing, e.g. storage-sim. */
  service: string;
  level?: string;
  /** Where lines go; stderr by default so stdout stays for a program's own output. */
  stream?: NodeJS.WritableStream;
}

/** One JSON object per line, one line per event, with a timestamp and the program's name. */
export function createLogger(opts: LoggerOptions): Logger {
  const level = opts.level ?? process.env.PASSTHRU_LOG_LEVEL ?? 'info';
  return winston.createLogger({
    level,
    defaultMeta: { service: opts.service },
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [
      opts.stream
        ? new winston.transports.Stream({ stream: opts.stream })
        : new winston.transports.Stream({ stream: process.stderr }),
    ],
  });
}

/** A logger that drops everything: for library use and unit tests. */
export function silentLogger(): Logger {
  return winston.createLogger({ silent: true, transports: [new winston.transports.Console({ silent: true })] });
}
