// How every layer logs: a message for people and, beside it, fields for programs. The command
// line makes each call one JSON line (pino: src/cli/logger.ts); tests pass (msg) => … and read the
// message. Only control-path events are logged: nothing here is called per frame.

export type EventLevel = 'debug' | 'info' | 'warn' | 'error';

export interface LogFields {
  /** default 'info' */
  level?: EventLevel;
  /** the port's name (vm0, tap:ev0) */
  port?: string;
  /** its connection number in the switch while attached */
  connection?: number;
  /** the vhost-user request the event is about (SET_VRING_KICK…) */
  request?: string;
  /** negotiated virtio features, by name */
  features?: string[];
  /** negotiated vhost-user protocol features, by name */
  protocolFeatures?: string[];
  /** a socket path */
  path?: string;
  [key: string]: unknown;
}

export type Log = (msg: string, fields?: LogFields) => void;

/** A log that adds fields to every event (each event's own fields win). */
export function withFields(log: Log, fields: () => LogFields): Log {
  return (msg, f) => log(msg, f === undefined ? fields() : { ...fields(), ...f });
}
