// A protected volume as the write path sees it: its production image (descriptor, path, kind) and
// its dirty map. Its own file so that the pipeline and the write engines share it without a cycle.
import type { DirtyMap } from './dirty-map.js';

export interface ProductionVolume {
  readonly name: string;
  readonly index: number;
  readonly sizeBytes: number;
  readonly path: string;
  readonly fd: number;
  readonly blockDevice: boolean;
  readonly dirty: DirtyMap;
}
