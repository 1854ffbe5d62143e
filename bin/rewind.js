#!/usr/bin/env node
// The rewind command: runs the compiled CLI (npm run build first).
import { main } from '../dist/src/cli/main.js';
await main(process.argv);
