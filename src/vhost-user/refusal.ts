// A request the back-end refuses: it failed validation and changed nothing, so the connection can
// go on where the front-end can be told (QEMU docs/interop/vhost-user.rst, REPLY_ACK). What the
// session does with one is in its dispatcher (Session.failed); any other error from a request closes the
// connection (broken framing, a hostile memory table).

/** What to do with a refusal the front-end cannot be told about (no REPLY_ACK ack asked for). */
export type WithoutAck =
  /** close the connection: going on, the front-end would believe a state the back-end does not have */
  | 'close'
  /** log it and go on: nothing the front-end does next depends on it (the request is as if not sent) */
  | 'ignore';

export class Refusal extends Error {
  constructor(message: string, readonly withoutAck: WithoutAck = 'close') {
    super(message);
  }
}

/** Runs f (a check of a lower layer that throws a plain Error) and refuses with its message. */
export function refuseOnError<T>(f: () => T, withoutAck: WithoutAck = 'close'): T {
  try {
    return f();
  } catch (e) {
    throw new Refusal((e as Error).message, withoutAck);
  }
}
