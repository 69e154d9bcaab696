// What a virtio-net device needs to know of the negotiated features, derived once when the
// front-end sets them: the session hands it to the device, which never looks at feature bits.
import { has, VirtioFeature } from './features';
import { netHeaderLength } from './net-header';
import { RX_CSUM, RX_ECN, RX_TSO4, RX_TSO6 } from './offload';

export interface NetConfig {
  /** virtio-net header length on both rings: 12 (VERSION_1 or MRG_RXBUF) or 10 */
  readonly hdrLen: number;
  /** MRG_RXBUF: a packet may span several RX chains (num_buffers) */
  readonly mergeableRx: boolean;
  /** RX_* offloads the guest takes as they are (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN) */
  readonly rxOffload: number;
  /** RX_* offloads the guest may send (CSUM, HOST_TSO4/6, HOST_ECN) */
  readonly txOffload: number;
}

export function netConfigOf(features: bigint): NetConfig {
  return {
    hdrLen: netHeaderLength(features),
    mergeableRx: has(features, VirtioFeature.NET_F_MRG_RXBUF),
    rxOffload:
      (has(features, VirtioFeature.NET_F_GUEST_CSUM) ? RX_CSUM : 0) |
      (has(features, VirtioFeature.NET_F_GUEST_TSO4) ? RX_TSO4 : 0) |
      (has(features, VirtioFeature.NET_F_GUEST_TSO6) ? RX_TSO6 : 0) |
      (has(features, VirtioFeature.NET_F_GUEST_ECN) ? RX_ECN : 0),
    txOffload:
      (has(features, VirtioFeature.NET_F_CSUM) ? RX_CSUM : 0) |
      (has(features, VirtioFeature.NET_F_HOST_TSO4) ? RX_TSO4 : 0) |
      (has(features, VirtioFeature.NET_F_HOST_TSO6) ? RX_TSO6 : 0) |
      (has(features, VirtioFeature.NET_F_HOST_ECN) ? RX_ECN : 0),
  };
}

/** before SET_FEATURES: what a device assumes */
export const DEFAULT_NET_CONFIG: NetConfig = { hdrLen: 12, mergeableRx: false, rxOffload: 0, txOffload: 0 };
