// virtio and virtio-net feature bits (virtio 1.x, 5.1.3 and 6), and bit-mask helpers.
/** virtio and virtio-net device feature bits this back-end knows by name. */
export const VirtioFeature = {
  NET_F_CSUM: 0,
  NET_F_GUEST_CSUM: 1,
  NET_F_CTRL_GUEST_OFFLOADS: 2,
  NET_F_MTU: 3,
  NET_F_MAC: 5,
  NET_F_GUEST_TSO4: 7,
  NET_F_GUEST_TSO6: 8,
  NET_F_GUEST_ECN: 9,
  NET_F_GUEST_UFO: 10,
  NET_F_HOST_TSO4: 11,
  NET_F_HOST_TSO6: 12,
  NET_F_HOST_ECN: 13,
  NET_F_HOST_UFO: 14,
  NET_F_MRG_RXBUF: 15,
  NET_F_STATUS: 16,
  NET_F_CTRL_VQ: 17,
  NET_F_CTRL_RX: 18,
  NET_F_CTRL_VLAN: 19,
  NET_F_GUEST_ANNOUNCE: 21,
  NET_F_MQ: 22,
  F_NOTIFY_ON_EMPTY: 24,
  LOG_ALL: 26,
  F_ANY_LAYOUT: 27,
  RING_F_INDIRECT_DESC: 28,
  RING_F_EVENT_IDX: 29,
  USER_F_PROTOCOL_FEATURES: 30,
  F_VERSION_1: 32,
  F_ACCESS_PLATFORM: 33,
  F_RING_PACKED: 34,
} as const;

export function bit(n: number): bigint {
  return 1n << BigInt(n);
}

export function has(mask: bigint, n: number): boolean {
  return (mask & bit(n)) !== 0n;
}


/**
 * virtio 1.x 5.1.3.1, "Feature bit requirements" of a network device: each feature with the
 * features one of which it needs. A driver must not accept a feature without what it requires —
 * but QEMU's per-offload properties (csum=off, guest_csum=off…) leave, say, HOST_TSO4 or GUEST_ECN
 * on, and Linux accepts them, so a back-end that refused such a set would refuse ordinary VMs (and
 * QEMU with reconnect=1 would retry for ever). A feature without its requirement is meaningless, so
 * it is left out of what the device uses (netFeaturesUsable). Not here: the ones that require
 * VIRTIO_NET_F_CTRL_VQ (MQ, CTRL_RX, GUEST_ANNOUNCE…): with vhost-user the control queue is the
 * front-end's, and QEMU passes MQ and GUEST_ANNOUNCE on without CTRL_VQ. MRG_RXBUF, MTU and
 * STATUS require nothing.
 */
const NET_REQUIREMENTS: readonly (readonly [feature: number, needsOneOf: readonly number[]])[] = [
  [VirtioFeature.NET_F_GUEST_TSO4, [VirtioFeature.NET_F_GUEST_CSUM]],
  [VirtioFeature.NET_F_GUEST_TSO6, [VirtioFeature.NET_F_GUEST_CSUM]],
  [VirtioFeature.NET_F_GUEST_UFO, [VirtioFeature.NET_F_GUEST_CSUM]],
  [VirtioFeature.NET_F_GUEST_ECN, [VirtioFeature.NET_F_GUEST_TSO4, VirtioFeature.NET_F_GUEST_TSO6]],
  [VirtioFeature.NET_F_HOST_TSO4, [VirtioFeature.NET_F_CSUM]],
  [VirtioFeature.NET_F_HOST_TSO6, [VirtioFeature.NET_F_CSUM]],
  [VirtioFeature.NET_F_HOST_UFO, [VirtioFeature.NET_F_CSUM]],
  [VirtioFeature.NET_F_HOST_ECN, [VirtioFeature.NET_F_HOST_TSO4, VirtioFeature.NET_F_HOST_TSO6]],
];

const featureName = (n: number): string => Object.keys(VirtioFeature).find((k) => VirtioFeature[k as keyof typeof VirtioFeature] === n) ?? `bit ${n}`;

/**
 * The features of `features` the device may use: those whose 5.1.3.1 requirement is missing are
 * taken out (and what needed them, in turn), each named in `unmet`.
 */
export function netFeaturesUsable(features: bigint): { usable: bigint; unmet: string[] } {
  let usable = features;
  const unmet: string[] = [];
  for (let changed = true; changed; ) {
    changed = false;
    for (const [f, needs] of NET_REQUIREMENTS) {
      if (has(usable, f) && !needs.some((n) => has(usable, n))) {
        usable &= ~bit(f);
        unmet.push(`${featureName(f)} requires ${needs.map(featureName).join(' or ')}`);
        changed = true;
      }
    }
  }
  return { usable, unmet };
}
