// The export registry an NBD server serves: production volumes (agent) plus views and clones
// (manager), looked up by name on every connection so exports can come and go.
import type { ExportBackend, ExportRegistry } from '../nbd/backend.js';

export class CombinedRegistry implements ExportRegistry {
  private readonly sources: (() => readonly ExportBackend[])[];

  constructor(sources: (() => readonly ExportBackend[])[]) {
    this.sources = sources;
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
