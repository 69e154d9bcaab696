/**
 * elastic-vhost as a library: a vhost-user virtual switch for QEMU guests, built and driven from
 * TypeScript or JavaScript. Frames with no known destination, or none of its RX buffers free,
 * wait in an elastic FIFO instead of being dropped.
 *
 * ```ts
 * import { createSwitch, vhostUserPort, tapPort } from 'elastic-vhost';
 *
 * const sw = createSwitch({ poolMb: 64 });
 * sw.addPort(vhostUserPort({ name: 'vm0', path: '/run/ev/vm0.sock' }));
 * sw.addPort(vhostUserPort({ name: 'vm1', path: '/run/ev/vm1.sock' }));
 * sw.addPort(tapPort('ev0'));
 * sw.on('macLearned', (e) => console.log(`${e.mac} is on ${e.port}`));
 * ```
 *
 * The options and port specs are the config file's (`elastic-vhost --print-config-schema`),
 * with the same defaults and checks. The command `elastic-vhost` is built on this API.
 *
 * @packageDocumentation
 */
export { createSwitch } from './api/switch';
export type {
  ElasticSwitch,
  Port,
  SwitchStatsSnapshot,
  VhostUserPortStats,
  TapPortStats,
  VxlanPortStats,
  LimitStats,
  MacTableEntry,
} from './api/switch';
export { vhostUserPort, tapPort, vxlanPort, SWITCH_KEYS, LIVE_KEYS } from './api/options';
export type {
  SwitchOptions,
  ResolvedSwitchOptions,
  LiveSetting,
  PortConfig,
  VhostUserPortConfig,
  TapPortConfig,
  VxlanPortConfig,
  VhostUserPortSpec,
  VhostUserFdPortSpec,
  TapPortSpec,
  VxlanPortSpec,
} from './api/options';
export type {
  SwitchEvents,
  SwitchEventName,
  SwitchEventEmitter,
  PortKind,
  PortEvent,
  PortUpEvent,
  PortDownEvent,
  MacLearnedEvent,
  MacMovedEvent,
  MacForgottenEvent,
  RingBrokenEvent,
  DropsEvent,
  DropReasons,
} from './api/events';
export { ConfigError } from './cli/config';
export type { Log, LogFields, EventLevel } from './log';
// the types the counters are made of
export type { SwitchStats, SwitchSettings, PortStats, PoolStats } from './engine/switch';
export type { TrafficCounts, DropCounts } from './engine/counters';
export type { PortCounters } from './ports/vhost-user/port';
export type { TapCounters } from './ports/tap-port';
export type { VxlanCounters, VxlanVtepStats, VxlanSpec, VxlanEndpoint } from './ports/vxlan-port';
export type { FallbackCounters } from './ports/offload-fallback';
export type { UnknownPolicy } from './engine/monitor';
