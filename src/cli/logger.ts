// The command's log (pino): one JSON line per event on stdout — level, time, pid, the event's
// fields (port, connection, request, features…) and its message in `msg` — or, when stdout is a
// terminal, the same events made readable by pino-pretty. Written synchronously: an event logged
// just before process.exit() is not lost, and events are few (none per frame).
import pino from 'pino';
import pretty from 'pino-pretty';
import type { LogLevel } from '../defaults';
import type { Log } from '../log';

export interface Logger {
  log: Log;
  setLevel(level: LogLevel): void;
}

export function createLogger(level: LogLevel, opts: { pretty?: boolean } = {}): Logger {
  const human = opts.pretty ?? process.stdout.isTTY === true;
  const options: pino.LoggerOptions = {
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
  const dest = human
    ? pretty({ sync: true, colorize: true, singleLine: true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l', ignore: 'pid,hostname' })
    : pino.destination({ dest: 1, sync: true });
  const logger = pino(options, dest);
  const log: Log = (msg, fields) => {
    if (fields === undefined) {
      logger.info(msg);
      return;
    }
    const { level: l, ...rest } = fields;
    logger[l ?? 'info'](rest, msg);
  };
  return { log, setLevel: (l) => (logger.level = l) };
}
