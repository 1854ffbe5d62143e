// The commander side of `rewind map`, `unmap` (`umount`), `mount` and `maps`: arguments to the
// operations of map.ts, and what they print (the device alone on stdout, so LOOP=$(rewind map X)
// works; what it is on stderr).
import type { Command } from 'commander';
import { RewindError } from '../core/index.js';
import { describeRecord, listMaps, mapView, mountView, unmapArgs, unmapView } from './map.js';
import type { MapApi, MapWhat } from './map.js';

export interface MapCommandDeps {
  /** Adds --server and --api-token-file. */
  withServer: (command: Command) => Command;
  /** The API and NBD address from a command's options. */
  api: (options: { server?: string; apiTokenFile?: string; nbd?: string }) => MapApi;
}

const NBD_OPTION = [
  '--nbd <host:port>',
  'NBD address of the exports (default $REWIND_NBD or 127.0.0.1:10809)',
] as const;

type Options = { server?: string; apiTokenFile?: string; nbd?: string; production?: boolean };

function what(name: string, volume: string | undefined, options: Options): MapWhat {
  if (options.production && volume !== undefined)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      'with --production, give the volume alone (rewind map --production VOLUME)',
    );
  return { name, volume, production: options.production === true };
}

export function addMapCommands(program: Command, deps: MapCommandDeps): void {
  deps
    .withServer(
      program
        .command('map <name> [volume]')
        .description(
          'attach a snapshot or clone (or with --production a protected volume) as a local block device; prints it',
        )
        .option('--production', 'NAME is a production volume, mapped read-write')
        .option(...NBD_OPTION)
        .addHelpText(
          'after',
          '\nnbdfuse serves the export as a file, a loop device with direct I/O is put over it (read-only for a snapshot). Needs root, /dev/fuse and loop devices.',
        ),
    )
    .action(async (name: string, volume: string | undefined, options: Options) => {
      const record = await mapView(deps.api(options), what(name, volume, options));
      process.stderr.write(
        `${describeRecord(record)}: ${record.loop}${record.readOnly ? ' (read-only)' : ''}; rewind unmap ${unmapArgs(record)} detaches it\n`,
      );
      console.log(record.loop);
    });

  deps
    .withServer(
      program
        .command('mount <name> <dir>')
        .description(
          'mount the filesystem of a clone (read-write: its journal replays into the clone) or a snapshot (read-only, no journal replay) on DIR',
        )
        .option('--volume <volume>', 'the volume (when the volume set has several)')
        .option('--production', 'NAME is a production volume')
        .option(...NBD_OPTION),
    )
    .action(async (name: string, dir: string, options: Options & { volume?: string }) => {
      const { record, note } = await mountView(
        deps.api(options),
        what(name, options.volume, options),
        dir,
      );
      if (note) process.stderr.write(`rewind: ${note}\n`);
      console.log(
        `${describeRecord(record)}: ${record.loop} mounted at ${record.mountpoint ?? dir}${record.mountOptions ? ` (-o ${record.mountOptions})` : ''}`,
      );
    });

  deps
    .withServer(
      program
        .command('unmap <name> [volume]')
        .alias('umount')
        .description(
          'unmount (if rewind mount mounted it) and detach what rewind map attached; refused while it is in use',
        )
        .option('--production', 'NAME is a production volume'),
    )
    .action(async (name: string, volume: string | undefined, options: Options) => {
      for (const record of await unmapView(deps.api(options), what(name, volume, options)))
        console.log(
          `${describeRecord(record)}: ${record.mountpoint ? `unmounted ${record.mountpoint}, ` : ''}${record.loop} detached`,
        );
    });

  deps
    .withServer(
      program
        .command('maps')
        .description('what rewind map attached on this machine')
        .option('--json', 'print JSON'),
    )
    .action((options: Options & { json?: boolean }) => {
      const maps = listMaps(deps.api(options).server);
      if (options.json) return console.log(JSON.stringify(maps));
      if (maps.length === 0) return console.log('nothing mapped');
      for (const m of maps)
        console.log(
          `${describeRecord(m)}\t${m.loop}\t${m.mountpoint ?? '-'}\t${m.alive ? (m.readOnly ? 'ro' : 'rw') : 'stale (rewind unmap cleans it up)'}`,
        );
    });
}
