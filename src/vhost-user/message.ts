// vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message Specification").
// Every message: a 12-byte header — request u32, flags u32, size u32 — then `size` payload bytes,
// little-endian, with file descriptors travelling as SCM_RIGHTS ancillary data.

export const HDR_SIZE = 12;
export const VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 1 << 2;
export const FLAG_NEED_REPLY = 1 << 3;

/** Front-end → back-end requests, numbered as in the spec. */
export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;

const names: string[] = [];
for (const [k, v] of Object.entries(Req)) names[v] = `VHOST_USER_${k}`;

/** The spec name of a request, for logs: "VHOST_USER_SET_MEM_TABLE", or "unknown request 99". */
export function requestName(req: number): string {
  return names[req] ?? `unknown request ${req}`;
}

/** Protocol feature bits (VHOST_USER_PROTOCOL_F_*). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  NET_MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

/** SET_VRING_KICK/CALL/ERR payload: bits 0-7 ring index, bit 8 "no fd" (polling / no notification). */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

/** VhostUserMemoryRegion: guest_phys_addr, memory_size, userspace_addr, mmap_offset (u64 each). */
export const MEM_REGION_SIZE = 32;
/** SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_TABLE_REGIONS = 8;
/** VhostUserConfig: offset, size, flags (u32 each) then up to 256 bytes. */
export const CONFIG_HDR_SIZE = 12;
export const MAX_CONFIG_SIZE = 256;
/** Largest payload we accept at all; anything bigger is a broken peer. */
export const MAX_PAYLOAD = 4096;

/** Payload size rule per request: [min, max]; requests absent here are not accepted. */
export const payloadSize: ReadonlyMap<number, readonly [number, number]> = new Map<number, readonly [number, number]>([
  [Req.GET_FEATURES, [0, 8]],
  [Req.SET_FEATURES, [8, 8]],
  [Req.SET_OWNER, [0, 8]],
  [Req.RESET_OWNER, [0, 8]],
  [Req.SET_MEM_TABLE, [8, 8 + MAX_TABLE_REGIONS * MEM_REGION_SIZE]],
  [Req.SET_LOG_BASE, [16, 16]],
  [Req.SET_LOG_FD, [0, 8]],
  [Req.SET_VRING_NUM, [8, 8]],
  [Req.SET_VRING_ADDR, [40, 40]],
  [Req.SET_VRING_BASE, [8, 8]],
  [Req.GET_VRING_BASE, [8, 8]],
  [Req.SET_VRING_KICK, [8, 8]],
  [Req.SET_VRING_CALL, [8, 8]],
  [Req.SET_VRING_ERR, [8, 8]],
  [Req.GET_PROTOCOL_FEATURES, [0, 8]],
  [Req.SET_PROTOCOL_FEATURES, [8, 8]],
  [Req.GET_QUEUE_NUM, [0, 8]],
  [Req.SET_VRING_ENABLE, [8, 8]],
  [Req.SEND_RARP, [8, 8]],
  [Req.NET_SET_MTU, [8, 8]],
  [Req.SET_BACKEND_REQ_FD, [0, 8]],
  [Req.SET_VRING_ENDIAN, [8, 8]],
  [Req.GET_CONFIG, [CONFIG_HDR_SIZE, CONFIG_HDR_SIZE + MAX_CONFIG_SIZE]],
  [Req.SET_CONFIG, [CONFIG_HDR_SIZE, CONFIG_HDR_SIZE + MAX_CONFIG_SIZE]],
  [Req.RESET_DEVICE, [0, 8]],
  [Req.GET_MAX_MEM_SLOTS, [0, 8]],
  [Req.ADD_MEM_REG, [8 + MEM_REGION_SIZE, 8 + MEM_REGION_SIZE]],
  [Req.REM_MEM_REG, [8 + MEM_REGION_SIZE, 8 + MEM_REGION_SIZE]],
  [Req.SET_STATUS, [8, 8]],
  [Req.GET_STATUS, [0, 8]],
]);

/** A received message. The payload is a view into the connection's buffer, valid during dispatch only. */
export interface Message {
  request: number;
  flags: number;
  size: number;
  payload: DataView;
  fds: number[];
}

// The region description belongs to the memory layer; the message codec reads and writes it.
import type { MemRegion } from '../memory/guest-memory';
export type { MemRegion };

/** u64 as a JS number; throws beyond 2^53 (no guest address or size legitimately gets there). */
export function getU64(v: DataView, off: number): number {
  const lo = v.getUint32(off, true);
  const hi = v.getUint32(off + 4, true);
  if (hi >= 0x200000) throw new RangeError(`64-bit value 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is beyond 2^53`);
  return hi * 0x100000000 + lo;
}

/** u64 split into two u32 halves, for feature masks (which use bits above 53). */
export function getU64Bigint(v: DataView, off: number): bigint {
  return v.getBigUint64(off, true);
}

export function setU64(v: DataView, off: number, value: number | bigint): void {
  v.setBigUint64(off, BigInt(value), true);
}

export function readRegion(v: DataView, off: number): MemRegion {
  return {
    guestPhysAddr: getU64(v, off),
    memorySize: getU64(v, off + 8),
    userspaceAddr: getU64(v, off + 16),
    mmapOffset: getU64(v, off + 24),
  };
}

export function writeRegion(v: DataView, off: number, r: MemRegion): void {
  setU64(v, off, r.guestPhysAddr);
  setU64(v, off + 8, r.memorySize);
  setU64(v, off + 16, r.userspaceAddr);
  setU64(v, off + 24, r.mmapOffset);
}

/** Builds a message (header + payload) into a fresh buffer: control path only. */
export function encode(request: number, flags: number, payload?: Uint8Array): Uint8Array {
  const size = payload ? payload.length : 0;
  const out = new Uint8Array(HDR_SIZE + size);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  if (payload) out.set(payload, HDR_SIZE);
  return out;
}

export function u64Payload(value: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(value), true);
  return b;
}

export function vringStatePayload(index: number, num: number): Uint8Array {
  const b = new Uint8Array(8);
  const v = new DataView(b.buffer);
  v.setUint32(0, index, true);
  v.setUint32(4, num, true);
  return b;
}
