// The console's route table: every screen, in the order of the navigation. Adding a screen is
// adding a file in screens/ and a line here.
import type { Screen } from './screen.js';
import { overview } from './screens/overview.js';
import { timeline } from './screens/timeline.js';
import { point } from './screens/point.js';
import { view } from './screens/view.js';
import { restore } from './screens/restore.js';
import { blockMap } from './screens/blockmap.js';

export const SCREENS: readonly Screen[] = [overview, timeline, restore, blockMap, point, view];

export const DEFAULT_SCREEN = overview;
