// Memory: the agent's peak RSS (VmHWM) while it protects two large sparse volumes (1 TiB in all in
// the full mode) in split mode under a short 4 KiB random-write load spread over both whole
// volumes, and the peaks of every Rewind process seen during the other runs.
import { formatSize, MiB, TARGETS, type Mode } from './config.js';
import { runFio, type FioJob } from './fio.js';
import { withScope } from './processes.js';
import { atMost, row, type PeakMemory, type Row } from './report.js';
import { splitLink, startRewindAgent, startRewindManager } from './servers.js';

const SECTION = 'peak memory (VmHWM)';

export async function measureSparseAgent(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row> {
  return withScope(mode.graceMs, async (scope) => {
    const volumes = [
      { name: 'a', sizeBytes: mode.sparseVolumeBytes },
      { name: 'b', sizeBytes: mode.sparseVolumeBytes },
    ];
    const link = await splitLink();
    const manager = await startRewindManager(scope, link);
    const agent = await startRewindAgent(scope, link, volumes);
    const jobs: FioJob[] = volumes.map((volume) => ({
      uri: agent.uri(volume.name),
      rw: 'randwrite',
      blockBytes: 4096,
      iodepth: 16,
      sizeBytes: volume.sizeBytes,
      length: { rampSeconds: 0, runSeconds: mode.sparseLoadSeconds },
    }));
    const fio = await runFio(jobs, scope.dir('fio'), mode.stepTimeoutMs);
    const rssBytes = agent.process.peakRssBytes();
    memory.record('agent', rssBytes);
    memory.record('manager', manager.process.peakRssBytes());
    const total = formatSize(mode.sparseVolumeBytes * volumes.length);
    progress(
      `memory: agent ${(rssBytes / MiB).toFixed(0)} MiB with ${total} sparse after ${fio.write.ios} writes`,
    );
    return row(
      {
        id: 'memory.agent-sparse',
        section: SECTION,
        label: `agent protecting 2 x ${formatSize(mode.sparseVolumeBytes)} sparse`,
        value: rssBytes / MiB,
        unit: 'MiB',
        detail: `${fio.write.ios} 4 KiB random writes over both whole volumes in ${mode.sparseLoadSeconds} s (${Math.round(fio.write.iops)} IOPS)`,
      },
      atMost(rssBytes / MiB, TARGETS.agentRssSparseMiB, `<= ${TARGETS.agentRssSparseMiB} MiB`),
    );
  });
}

/** One row per process role that was measured, in a fixed order. */
export function peakRows(memory: PeakMemory): Row[] {
  const roles = [
    { role: 'rewind up', label: 'rewind up (agent + manager), all up runs' },
    { role: 'agent', label: 'rewind agent, all agent runs (alone and split)' },
    { role: 'manager', label: 'rewind manager, all split runs' },
  ];
  return roles.flatMap(({ role, label }) => {
    const bytes = memory.get(role);
    if (bytes === undefined) return [];
    return [
      row({
        id: `memory.${role.replace(' ', '-')}`,
        section: SECTION,
        label,
        value: bytes / MiB,
        unit: 'MiB',
        detail: 'highest VmHWM seen, read just before stopping',
      }),
    ];
  });
}
