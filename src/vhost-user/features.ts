// Feature bit names both ways, for logs and for building masks.
import { ProtocolFeature } from './message';

// The virtio feature bits live with the virtio layer (src/virtio/features.ts); re-exported here
// for the protocol code and its tests.
export { VirtioFeature, bit, has } from '../virtio/features';
import { VirtioFeature, bit, has } from '../virtio/features';

function namesOf(mask: bigint, table: Record<string, number>): string {
  const out: string[] = [];
  let known = 0n;
  for (const [k, v] of Object.entries(table)) {
    if (has(mask, v)) out.push(k);
    known |= bit(v);
  }
  const rest = mask & ~known;
  if (rest !== 0n) out.push(`0x${rest.toString(16)}`);
  return out.length ? out.join('|') : '(none)';
}

export function virtioFeatureNames(mask: bigint): string {
  return namesOf(mask, VirtioFeature);
}

export function protocolFeatureNames(mask: bigint): string {
  return namesOf(mask, ProtocolFeature);
}
