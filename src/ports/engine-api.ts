// What a port needs of the switch engine (src/engine/switch.ts implements it).
import { EnginePort } from '../engine/port';
import type { Frame } from '../datapath/frame';

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
  flush(): void;
  resourcesAvailable(index: number): void;
}
