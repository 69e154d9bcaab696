// Frame layout constants shared by every layer (virtio, engine, ports): one place for each.
//
// Inside the switch a frame is a 12-byte virtio_net_hdr_v1 — flags, gso_type, hdr_len, gso_size,
// csum_start, csum_offset, num_buffers (ignored on input) — and the Ethernet frame. The header and
// the Ethernet bytes need not lie together: see frame.ts.

/** the engine's virtio-net header: struct virtio_net_hdr_v1 */
export const ENGINE_HDR_LEN = 12;

// virtio_net_hdr field offsets
export const HDR_FLAGS = 0;
export const HDR_GSO_TYPE = 1;
export const HDR_HDR_LEN = 2;
export const HDR_GSO_SIZE = 4;
export const HDR_CSUM_START = 6;
export const HDR_CSUM_OFFSET = 8;
export const HDR_NUM_BUFFERS = 10;

// Ethernet field offsets (from the first byte of the Ethernet frame)
export const ETH_DST = 0;
export const ETH_SRC = 6;
export const ETH_TYPE = 12;
export const ETH_HDR_LEN = 14;

// EtherTypes and IP protocol numbers the data path looks at (offload, flow hash, MTU check)
export const ETH_P_IP = 0x0800;
export const ETH_P_IPV6 = 0x86dd;
export const ETH_P_8021Q = 0x8100;
export const ETH_P_8021AD = 0x88a8;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

/** largest Ethernet frame taken from anyone: a 64 KiB GSO payload + Ethernet header + one VLAN tag */
export const MAX_ETH_LEN = 65536 + 18;
/** largest engine frame: header + MAX_ETH_LEN */
export const MAX_FRAME = ENGINE_HDR_LEN + MAX_ETH_LEN;
/** the headers offload code reads contiguously: Ethernet + VLAN + IPv4/6 with options + TCP with options */
export const MAX_HEADERS = 192;
/** smallest engine frame: header + an Ethernet header */
export const MIN_FRAME = ENGINE_HDR_LEN + ETH_HDR_LEN;
