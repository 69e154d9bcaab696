// struct virtio_net_hdr (10 bytes) / virtio_net_hdr_mrg_rxbuf and virtio_net_hdr_v1 (12 bytes):
//   u8 flags, u8 gso_type, le16 hdr_len, le16 gso_size, le16 csum_start, le16 csum_offset,
//   le16 num_buffers (12-byte form only).
// The 12-byte form is used when VIRTIO_F_VERSION_1 or VIRTIO_NET_F_MRG_RXBUF is negotiated.
import { has, VirtioFeature } from './features';

export const NET_HDR_LEGACY = 10;
export const NET_HDR_V1 = 12;
export const NUM_BUFFERS_OFFSET = 10;

export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;

export function netHeaderLength(features: bigint): number {
  return has(features, VirtioFeature.F_VERSION_1) || has(features, VirtioFeature.NET_F_MRG_RXBUF) ? NET_HDR_V1 : NET_HDR_LEGACY;
}
