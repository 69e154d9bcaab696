// What a port needs of the switch engine (src/engine/switch.ts implements it).
import { EnginePort } from '../engine/port';
import type { Frame } from '../datapath/frame';
import type { Burst } from '../datapath/burst';

export interface PortAttachOptions {
  /** static MAC (aa:bb:cc:dd:ee:ff): known from the start, and the only source MAC allowed */
  staticMac?: string;
  /** most local-data-store blocks this port's queue may hold */
  shareLimit?: number;
}

export interface EngineApi {
  attach(port: EnginePort, opts?: PortAttachOptions): number;
  detach(index: number): void;
  input(srcIndex: number, frame: Frame): void;
  /**
   * A burst of frames from connection srcIndex (entries with len 0 were dropped by the port and
   * are skipped), through the classify, forward and store stages at once. Optional: an engine
   * without it gets input() per entry, in order.
   */
  inputBurst?(srcIndex: number, burst: Burst): void;
  flush(): void;
  /** RX queue lane (default 0) of connection index has buffers again, or its ring (re)started */
  resourcesAvailable(index: number, lane?: number): void;
  /** the port's set of RX queues changed (EnginePort.laneFor answers differently now) */
  queuesChanged(index: number): void;
}
