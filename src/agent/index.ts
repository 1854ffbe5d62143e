// Agent: the write path of a volume set, its spool, dirty maps and the shipper.
export {
  Agent,
  agentSpoolDir,
  checkVolumes,
  uuidBytes,
  type AgentOptions,
  type VolumeSpec,
} from './agent.js';
export type { AgentReport, ShipperTarget } from './shipper.js';
