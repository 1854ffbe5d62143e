// Views: interval maps, views of a volume set at a seq, clone overlays, stepping.
export {
  View,
  refuse,
  type History,
  type HistoryTx,
  type ReplicaAllocation,
  type ViewSource,
} from './view.js';
export { Overlay } from './overlay.js';
export { IntervalMap, type Mapped, type Gap, type Piece } from './interval-map.js';
export * from './tx-index.js';
