// The export registry an NBD server serves: production volumes (agent) plus views and clones
// (manager), looked up by name on every connection so exports can come and go.
import type { ExportBackend, ExportRegistry } from '../nbd/index.js';

export class CombinedRegistry implements ExportRegistry {
  private readonly sources: (() => readonly ExportBackend[])[];
  private readonly refuse: ((name: string) => string | null) | undefined;

  /** `refuse` says why an export is offline (a production restore), or null. */
  constructor(
    sources: (() => readonly ExportBackend[])[],
    refuse?: (name: string) => string | null,
  ) {
    this.sources = sources;
    this.refuse = refuse;
  }

  refusal(name: string): string | null {
    return this.refuse?.(name) ?? null;
  }

  get(name: string): ExportBackend | undefined {
    return this.list().find((e) => e.name === name);
  }

  list(): readonly ExportBackend[] {
    return this.sources.flatMap((source) => source());
  }

  defaultName(): string | undefined {
    return this.list()[0]?.name;
  }
}
