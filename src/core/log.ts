// The one logging signature every module takes: a level, a sentence, and optional fields.
export type LogLevel = 'info' | 'warn' | 'error';
export type LogFunction = (level: LogLevel, message: string, fields?: object) => void;
