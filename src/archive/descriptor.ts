// The volume-set descriptor: what a manager's catalog must know of a volume set beyond its batch
// objects (its id, its name, its volumes by index with their sizes) so that a rebuild from the
// archive alone can accept the agent again. The plain payload (before the codec) and the key; pure.
// docs/FORMATS.md "Archive volume-set descriptors" has it field by field.
import { RewindError } from '../core/index.js';

export const DESCRIPTOR_FORMAT = 'rewind-volume-set';
export const DESCRIPTOR_VERSION = 1;
/** A descriptor's plain bytes stay far below this (a few hundred bytes per volume). */
export const DESCRIPTOR_BYTES_MAX = 4 * 1024 * 1024;
/** As many volumes as the agent link accepts in a hello. */
const VOLUMES_MAX = 4096;
/** Volume and volume-set names are bounded like every other string on the link. */
const NAME_CHARS_MAX = 1024;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** Descriptor versions are numbered from 1, 16 digits in the key so keys sort in order. */
const VERSION_DIGITS = 16;

export interface DescriptorVolume {
  idx: number;
  name: string;
  sizeBytes: number;
}

export interface VolumeSetDescriptor {
  volumeSetId: string;
  volumeSetName: string;
  /** By index, 0 first, contiguous. */
  volumes: DescriptorVolume[];
}

/** `VOLUMESETID/set/NNNNNNNNNNNNNNNN`: version `version` of the set's descriptor. */
export function descriptorKey(volumeSetId: string, version: number): string {
  if (!Number.isSafeInteger(version) || version < 1)
    throw new RewindError('REWIND_BAD_ARGUMENT', `descriptor version ${version} is not 1 or more`);
  return `${volumeSetId}/set/${String(version).padStart(VERSION_DIGITS, '0')}`;
}

/** The volume set and version a descriptor key names, or undefined for any other key. */
export function parseDescriptorKey(
  key: string,
): { volumeSetId: string; version: number } | undefined {
  const match = /^([0-9a-f-]{36})\/set\/(\d{16})$/.exec(key);
  if (match === null || !UUID.test(match[1] as string)) return undefined;
  const version = Number(match[2]);
  return version >= 1 ? { volumeSetId: match[1] as string, version } : undefined;
}

/**
 * The plain bytes of a descriptor: UTF-8 JSON with its members in a fixed order, so the same
 * volume set always encodes to the same bytes (a put repeated after a crash is recognised).
 */
export function encodeDescriptor(descriptor: VolumeSetDescriptor): Buffer {
  const checked = checkDescriptor(descriptor, 'descriptor to write');
  return Buffer.from(
    JSON.stringify({
      format: DESCRIPTOR_FORMAT,
      version: DESCRIPTOR_VERSION,
      volumeSetId: checked.volumeSetId,
      volumeSetName: checked.volumeSetName,
      volumes: checked.volumes.map((v) => ({ idx: v.idx, name: v.name, sizeBytes: v.sizeBytes })),
    }),
    'utf8',
  );
}

/** A descriptor's plain bytes decoded; anything unexpected is REWIND_ARCHIVE_CORRUPT. */
export function decodeDescriptor(plain: Buffer, name: string): VolumeSetDescriptor {
  const corrupt = (what: string): RewindError =>
    new RewindError('REWIND_ARCHIVE_CORRUPT', `volume-set descriptor ${name}: ${what}`);
  if (plain.length > DESCRIPTOR_BYTES_MAX) throw corrupt(`${plain.length} bytes, too large`);
  let json: unknown;
  try {
    json = JSON.parse(plain.toString('utf8')) as unknown;
  } catch (error) {
    throw new RewindError('REWIND_ARCHIVE_CORRUPT', `volume-set descriptor ${name}: not JSON`, {
      cause: error,
    });
  }
  if (typeof json !== 'object' || json === null) throw corrupt('not a JSON object');
  const fields = json as Record<string, unknown>;
  if (fields.format !== DESCRIPTOR_FORMAT) throw corrupt(`format is not "${DESCRIPTOR_FORMAT}"`);
  if (fields.version !== DESCRIPTOR_VERSION)
    throw corrupt(`version ${JSON.stringify(fields.version)}, only ${DESCRIPTOR_VERSION} is read`);
  return checkDescriptor(
    {
      volumeSetId: fields.volumeSetId as string,
      volumeSetName: fields.volumeSetName as string,
      volumes: fields.volumes as DescriptorVolume[],
    },
    name,
    corrupt,
  );
}

function checkDescriptor(
  d: VolumeSetDescriptor,
  name: string,
  fail: (what: string) => RewindError = (what) =>
    new RewindError('REWIND_BAD_ARGUMENT', `${name}: ${what}`),
): VolumeSetDescriptor {
  const isName = (v: unknown): v is string =>
    typeof v === 'string' && v.length > 0 && v.length <= NAME_CHARS_MAX;
  if (typeof d.volumeSetId !== 'string' || !UUID.test(d.volumeSetId))
    throw fail('volumeSetId is not a lower-case UUID');
  if (typeof d.volumeSetName !== 'string' || d.volumeSetName.length > NAME_CHARS_MAX)
    throw fail('volumeSetName is not a string of at most 1024 characters');
  if (!Array.isArray(d.volumes) || d.volumes.length > VOLUMES_MAX)
    throw fail(`volumes is not a list of at most ${VOLUMES_MAX}`);
  const volumes: DescriptorVolume[] = [];
  for (const [i, v] of (d.volumes as unknown[]).entries()) {
    const volume = v as Partial<DescriptorVolume> | null;
    if (typeof volume !== 'object' || volume === null) throw fail(`volume ${i} is not an object`);
    if (volume.idx !== i) throw fail(`volume ${i} has idx ${JSON.stringify(volume.idx)}`);
    if (!isName(volume.name)) throw fail(`volume ${i} has no valid name`);
    if (!Number.isSafeInteger(volume.sizeBytes) || (volume.sizeBytes as number) < 0)
      throw fail(`volume ${i} has no valid sizeBytes`);
    volumes.push({ idx: i, name: volume.name, sizeBytes: volume.sizeBytes as number });
  }
  if (new Set(volumes.map((v) => v.name)).size !== volumes.length)
    throw fail('two volumes share a name');
  return { volumeSetId: d.volumeSetId, volumeSetName: d.volumeSetName, volumes };
}
