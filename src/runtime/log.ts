// Where the processes' log lines go, and in what form: JSON lines (pino) on stderr for log
// collectors, or, when stderr is a terminal, one human line per event (pino-pretty), so a person
// running `rewind up` in a terminal does not read JSON between the human lines on stdout.
// REWIND_LOG_FORMAT=json or pretty overrides the choice.
import pino from 'pino';
import pretty from 'pino-pretty';
import { RewindError } from '../core/index.js';

export type LogFormat = 'json' | 'pretty';

/** The format for this process: REWIND_LOG_FORMAT, else pretty on a terminal, else JSON. */
export function logFormat(): LogFormat {
  const given = process.env.REWIND_LOG_FORMAT;
  if (given === 'json' || given === 'pretty') return given;
  if (given !== undefined && given !== '')
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `REWIND_LOG_FORMAT "${given}" is not json or pretty`,
    );
  return process.stderr.isTTY ? 'pretty' : 'json';
}

/** The destination of the log on stderr, written synchronously (a crash loses no line). */
export function logDestination(format: LogFormat): pino.DestinationStream {
  if (format === 'json') return pino.destination(2);
  return pretty({
    destination: 2,
    sync: true,
    colorize: process.stderr.isTTY,
    translateTime: 'SYS:HH:MM:ss.l',
    ignore: 'pid,hostname',
    singleLine: true,
  });
}
