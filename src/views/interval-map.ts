// Interval map for views: half-open byte ranges to a value and a source offset, kept in a B+-tree
// of sorted leaf arrays.
import { assert } from '../core/index.js';

/** The largest position: 2^53 is exact, and so is every difference of two positions up to it. */
const POSITION_MAX = 2 ** 53;
/**
 * Node capacity: arrays this long shift in well under a microsecond and keep the tree 3-4 levels
 * deep at 1M entries.
 */
const NODE_SIZE_MAX_DEFAULT = 64;
/**
 * Below 4 a split or merge could leave a node with fewer than 2 items, and the tree would stop
 * being balanced.
 */
const NODE_SIZE_MAX_MIN = 4;
/**
 * Bounds every descent: 2^53 entries at the smallest fanout still fit in fewer levels than this.
 */
const DEPTH_MAX = 64;

/**
 * A mapped range: `valueOffset` is the position in the value's source that corresponds to `start`.
 */
export interface Mapped<T> {
  start: number;
  end: number;
  value: T;
  valueOffset: number;
}

/** An unmapped range, as `query` reports it between mapped pieces. */
export interface Gap {
  start: number;
  end: number;
  value: undefined;
  valueOffset: 0;
}

export type Piece<T> = Mapped<T> | Gap;

/** Receives one piece of `forEachPiece`: a gap has value undefined and valueOffset 0. */
export type PieceVisitor<T> = (
  start: number,
  end: number,
  value: T | undefined,
  valueOffset: number,
) => void;

export interface IntervalMapOptions {
  /**
   * Most entries per leaf and children per branch; small values make tests exercise splits and
   * merges.
   */
  nodeSizeMax?: number;
}

export class IntervalMap<T> {
  private readonly nodeSizeMax: number;
  private tree: EntryTree<T>;
  private bytes = 0;

  constructor(options: IntervalMapOptions = {}) {
    this.nodeSizeMax = options.nodeSizeMax ?? NODE_SIZE_MAX_DEFAULT;
    assert(Number.isInteger(this.nodeSizeMax), 'interval map: nodeSizeMax is not an integer');
    assert(this.nodeSizeMax >= NODE_SIZE_MAX_MIN, 'interval map: nodeSizeMax below 4');
    this.tree = new EntryTree<T>(this.nodeSizeMax);
  }

  /**
   * Number of entries (touching pieces of one source with continuing offsets are kept as one
   * entry).
   */
  get size(): number {
    return this.tree.size;
  }

  get mappedBytes(): number {
    return this.bytes;
  }

  /** Maps [start, end), replacing whatever was mapped there. */
  set(start: number, end: number, value: T, valueOffset: number): void {
    assertRange(start, end);
    assertValueOffset(valueOffset, end - start);
    const entry = { start, end, value, valueOffset };
    if (this.insertJoined(entry)) return;
    this.unmap(start, end);
    this.insertCoalesced(entry);
  }

  /**
   * Maps only the unmapped parts of [start, end); each part keeps its offset relative to `start`.
   * Returns the parts added.
   */
  fillGaps(start: number, end: number, value: T, valueOffset: number): number {
    assertRange(start, end);
    assertValueOffset(valueOffset, end - start);
    if (this.insertJoined({ start, end, value, valueOffset })) return 1;
    // Gaps are listed before inserting, so the walk never sees its own insertions.
    const gaps = gapsBetween(this.tree.overlapping(start, end), start, end);
    for (const gap of gaps) {
      this.insertCoalesced({
        start: gap.start,
        end: gap.end,
        value,
        valueOffset: valueOffset + (gap.start - start),
      });
    }
    return gaps.length;
  }

  delete(start: number, end: number): void {
    assertRange(start, end);
    this.unmap(start, end);
  }

  /**
   * The pieces covering exactly [start, end) in order, gaps included, clipped to the range: O(log n
   * + k).
   */
  query(start: number, end: number): Array<Piece<T>> {
    assertRange(start, end);
    const pieces: Array<Piece<T>> = [];
    let position = start;
    for (const entry of this.tree.overlapping(start, end)) {
      if (entry.start > position) pieces.push(gapPiece(position, entry.start));
      const pieceStart = Math.max(entry.start, start);
      const pieceEnd = Math.min(entry.end, end);
      pieces.push(clip(entry, pieceStart, pieceEnd));
      position = pieceEnd;
    }
    if (position < end) pieces.push(gapPiece(position, end));
    return pieces;
  }

  /**
   * Visits the pieces covering exactly [start, end) in order, gaps included (value undefined),
   * clipped to the range, like `query` but without allocating a piece per entry. `visit` must not
   * change the map.
   */
  forEachPiece(start: number, end: number, visit: PieceVisitor<T>): void {
    assertRange(start, end);
    let position = start;
    this.tree.visitOverlapping(start, end, (entryStart, entryEnd, value, valueOffset) => {
      if (entryStart > position) visit(position, entryStart, undefined, 0);
      const pieceStart = entryStart > start ? entryStart : start;
      const pieceEnd = entryEnd < end ? entryEnd : end;
      visit(pieceStart, pieceEnd, value, valueOffset + (pieceStart - entryStart));
      position = pieceEnd;
    });
    if (position < end) visit(position, end, undefined, 0);
  }

  /**
   * Fills an empty map with `count` entries given in ascending order without overlap, in O(n): the
   * leaves are filled in order and the branches built above them, instead of one descent per entry.
   * Touching entries that `set` would join (same value, continuing offsets) are joined here too.
   */
  load(
    count: number,
    starts: ArrayLike<number>,
    ends: ArrayLike<number>,
    valueOffsets: ArrayLike<number>,
    valueAt: (index: number) => T,
  ): void {
    assert(this.tree.size === 0, 'interval map: load into a map that is not empty');
    const leaves: Array<Leaf<T>> = [];
    let leaf = new Leaf<T>(this.nodeSizeMax + 1);
    let entries = 0;
    let bytes = 0;
    let pending = false;
    let pendingStart = 0;
    let pendingEnd = 0;
    let pendingValue: T | undefined;
    let pendingOffset = 0;
    const flush = (): void => {
      if (leaf.count === this.nodeSizeMax) {
        leaves.push(leaf);
        leaf = new Leaf<T>(this.nodeSizeMax + 1);
      }
      leaf.push(pendingStart, pendingEnd, pendingValue as T, pendingOffset);
      entries += 1;
      bytes += pendingEnd - pendingStart;
    };
    for (let index = 0; index < count; index += 1) {
      const start = starts[index] as number;
      const end = ends[index] as number;
      const valueOffset = valueOffsets[index] as number;
      const value = valueAt(index);
      assertRange(start, end);
      assertValueOffset(valueOffset, end - start);
      if (pending) {
        assert(pendingEnd <= start, 'interval map: load entries overlap or are out of order');
        if (
          pendingEnd === start &&
          pendingValue === value &&
          pendingOffset + (pendingEnd - pendingStart) === valueOffset
        ) {
          pendingEnd = end;
          continue;
        }
        flush();
      }
      pending = true;
      pendingStart = start;
      pendingEnd = end;
      pendingValue = value;
      pendingOffset = valueOffset;
    }
    if (pending) flush();
    leaves.push(leaf);
    this.tree = EntryTree.fromLeaves(this.nodeSizeMax, leaves, entries);
    this.bytes = bytes;
  }

  /** Every entry in order, as copies: changing one does not change the map. */
  *entries(): Iterable<Mapped<T>> {
    yield* this.tree.ascending();
  }

  clear(): void {
    this.tree = new EntryTree<T>(this.nodeSizeMax);
    this.bytes = 0;
  }

  /** Walks the whole map asserting every structural and content invariant; for tests, O(n). */
  checkInvariants(): void {
    this.tree.checkInvariants();
    let bytes = 0;
    let previous: Mapped<T> | undefined;
    for (const entry of this.tree.ascending()) {
      assert(isPosition(entry.start), 'interval map invariant: start out of range');
      assert(isPosition(entry.end), 'interval map invariant: end out of range');
      assert(entry.start < entry.end, 'interval map invariant: empty entry');
      assert(
        isPosition(entry.valueOffset + (entry.end - entry.start)),
        'interval map invariant: valueOffset out of range',
      );
      assert(
        previous === undefined || previous.end <= entry.start,
        'interval map invariant: entries overlap',
      );
      assert(
        previous === undefined || !canJoin(previous, entry),
        'interval map invariant: joinable entries left apart',
      );
      bytes += entry.end - entry.start;
      previous = entry;
    }
    assert(
      bytes === this.bytes,
      'interval map invariant: mappedBytes differs from the sum of entries',
    );
  }

  /** Removes [start, end) from every entry it touches, keeping their parts outside the range. */
  private unmap(start: number, end: number): void {
    for (const entry of this.tree.overlapping(start, end)) {
      if (entry.start < start) {
        // The part past `end` starts inside the old entry, so no other entry can hold that key.
        if (entry.end > end) this.insertEntry(clip(entry, end, entry.end));
        this.setEntryEnd(entry, start);
      } else if (entry.end > end) {
        this.trimEntryStart(entry, end);
      } else {
        this.removeEntry(entry);
      }
    }
  }

  /**
   * Inserts an entry into an unmapped range, joining it with touching entries of the same source.
   */
  private insertCoalesced(entry: Mapped<T>): void {
    if (this.insertJoined(entry)) return;
    // A join across two leaves: find both neighbours, then join or insert one step at a time.
    let left: Mapped<T> | undefined;
    let right: Mapped<T> | undefined;
    for (const neighbor of this.tree.overlapping(entry.start - 1, entry.end + 1)) {
      if (neighbor.end === entry.start) left = neighbor;
      else if (neighbor.start === entry.end) right = neighbor;
      else assert(false, 'interval map: insert into a range that is still mapped');
    }
    let joined = entry;
    if (right !== undefined && canJoin(entry, right)) {
      this.removeEntry(right);
      joined = {
        start: entry.start,
        end: right.end,
        value: entry.value,
        valueOffset: entry.valueOffset,
      };
    }
    // Moving an entry's end leaves the tree's order alone: it is keyed by start only.
    if (left !== undefined && canJoin(left, joined)) this.setEntryEnd(left, joined.end);
    else this.insertEntry(joined);
  }

  private insertJoined(entry: Mapped<T>): boolean {
    if (!this.tree.insertJoined(entry)) return false;
    this.bytes += entry.end - entry.start;
    return true;
  }

  private insertEntry(entry: Mapped<T>): void {
    this.tree.insert(entry);
    this.bytes += entry.end - entry.start;
  }

  private removeEntry(entry: Mapped<T>): void {
    this.tree.remove(entry.start);
    this.bytes -= entry.end - entry.start;
  }

  private setEntryEnd(entry: Mapped<T>, end: number): void {
    this.tree.setEnd(entry.start, end);
    this.bytes += end - entry.end;
  }

  private trimEntryStart(entry: Mapped<T>, start: number): void {
    this.tree.trimStart(entry.start, start);
    this.bytes -= start - entry.start;
  }
}

/**
 * `keys[i]` is exactly the smallest start in `children[i]`, so a descent never lands right of its
 * floor.
 */
interface Branch<T> {
  readonly isLeaf: false;
  keys: number[];
  children: Array<TreeNode<T>>;
}

type TreeNode<T> = Leaf<T> | Branch<T>;

/**
 * Up to `capacity` entries, sorted by start, in two arrays allocated once: `numbers` holds the
 * starts, ends and value offsets in three segments of `capacity` unboxed doubles, `values` the
 * values. Searching a leaf reads a few contiguous cache lines; an object per entry would cost a
 * pointer chase and boxed numbers for every entry read.
 */
class Leaf<T> {
  readonly isLeaf = true;
  readonly capacity: number;
  count = 0;
  next: Leaf<T> | undefined = undefined;
  private readonly numbers: number[];
  private readonly values: Array<T | undefined>;

  constructor(capacity: number) {
    this.capacity = capacity;
    // A fractional fill makes V8 store the array as unboxed doubles from the start, never changing
    // representation.
    this.numbers = new Array<number>(3 * capacity).fill(0.5);
    this.values = new Array<T | undefined>(capacity).fill(undefined);
  }

  // start() and end() skip the bounds assert: they run inside every binary search, and callers stay
  // below count.
  start(index: number): number {
    return this.numbers[index] as number;
  }

  end(index: number): number {
    return this.numbers[this.capacity + index] as number;
  }

  entry(index: number): Mapped<T> {
    assert(index < this.count, 'interval map: leaf index past its entries');
    const valueOffset = this.numbers[2 * this.capacity + index] as number;
    return {
      start: this.start(index),
      end: this.end(index),
      value: this.values[index] as T,
      valueOffset,
    };
  }

  setEnd(index: number, end: number): void {
    assert(index < this.count, 'interval map: leaf index past its entries');
    this.numbers[this.capacity + index] = end;
  }

  /**
   * Moves an entry's start (and its value offset with it) without reordering: the caller keeps the
   * order.
   */
  setStart(index: number, start: number, valueOffset: number): void {
    assert(index < this.count, 'interval map: leaf index past its entries');
    this.numbers[index] = start;
    this.numbers[2 * this.capacity + index] = valueOffset;
  }

  /** Number of leading entries whose start is <= `key`. */
  countStartsAtMost(key: number): number {
    let low = 0;
    let high = this.count;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.start(middle) <= key) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  insert(index: number, entry: Mapped<T>): void {
    assert(this.count < this.capacity, 'interval map: leaf full');
    for (let position = this.count; position > index; position -= 1)
      this.copyEntry(this, position - 1, position);
    this.write(index, entry.start, entry.end, entry.value, entry.valueOffset);
    this.count += 1;
  }

  /** Appends an entry after the last one; the caller keeps the order. */
  push(start: number, end: number, value: T, valueOffset: number): void {
    assert(this.count < this.capacity, 'interval map: leaf full');
    this.write(this.count, start, end, value, valueOffset);
    this.count += 1;
  }

  /** Calls `visit` with the raw fields of entry `index` (no copy). */
  visit(index: number, visit: PieceVisitor<T>): void {
    visit(
      this.start(index),
      this.end(index),
      this.values[index],
      this.numbers[2 * this.capacity + index] as number,
    );
  }

  remove(index: number): void {
    for (let position = index + 1; position < this.count; position += 1)
      this.copyEntry(this, position, position - 1);
    this.truncate(this.count - 1);
  }

  /** Appends `count` entries of `source` from `from` on. */
  appendFrom(source: Leaf<T>, from: number, count: number): void {
    assert(this.count + count <= this.capacity, 'interval map: leaf overflow');
    for (let index = 0; index < count; index += 1)
      source.copyEntry(this, from + index, this.count + index);
    this.count += count;
  }

  /** Moves the entries from `from` on into a new leaf; the caller links it into the chain. */
  splitOff(from: number): Leaf<T> {
    const right = new Leaf<T>(this.capacity);
    right.appendFrom(this, from, this.count - from);
    this.truncate(from);
    return right;
  }

  /** Asserts the slot layout: a value past `count` would keep a dead object alive. */
  checkInvariants(): void {
    assert(this.count <= this.capacity, 'interval map invariant: leaf count past capacity');
    assert(
      this.numbers.length === 3 * this.capacity,
      'interval map invariant: leaf numbers resized',
    );
    assert(this.values.length === this.capacity, 'interval map invariant: leaf values resized');
    for (let index = this.count; index < this.capacity; index += 1) {
      assert(
        this.values[index] === undefined,
        'interval map invariant: leaf keeps a value past its entries',
      );
    }
  }

  private truncate(count: number): void {
    for (let index = count; index < this.count; index += 1) this.values[index] = undefined;
    this.count = count;
  }

  private copyEntry(target: Leaf<T>, from: number, to: number): void {
    const valueOffset = this.numbers[2 * this.capacity + from] as number;
    target.write(to, this.start(from), this.end(from), this.values[from], valueOffset);
  }

  private write(
    index: number,
    start: number,
    end: number,
    value: T | undefined,
    valueOffset: number,
  ): void {
    this.numbers[index] = start;
    this.numbers[this.capacity + index] = end;
    this.numbers[2 * this.capacity + index] = valueOffset;
    this.values[index] = value;
  }
}

/**
 * A B+-tree of entries keyed by start. Overlaps are `IntervalMap`'s to rule out; only insertJoined
 * looks at them.
 */
class EntryTree<T> {
  private readonly sizeMax: number;
  private readonly sizeMin: number;
  private root: TreeNode<T>;
  private count = 0;
  // The path of the last descent, reused so that an operation allocates nothing to walk the tree.
  private readonly pathNodes: Array<Branch<T>> = [];
  private readonly pathIndexes: number[] = [];
  private pathDepth = 0;

  constructor(sizeMax: number) {
    this.sizeMax = sizeMax;
    this.sizeMin = Math.floor(sizeMax / 2);
    this.root = this.newLeaf();
  }

  get size(): number {
    return this.count;
  }

  /**
   * A tree over `leaves` (in order, each holding at most sizeMax entries; only the last may hold
   * fewer than half): the leaves are chained, the last two evened out when needed, and branch
   * levels built above them the same way.
   */
  static fromLeaves<T>(sizeMax: number, leaves: Array<Leaf<T>>, count: number): EntryTree<T> {
    const tree = new EntryTree<T>(sizeMax);
    assert(leaves.length > 0, 'interval map: a tree has at least one leaf');
    const last = leaves.length - 1;
    if (last > 0 && (leaves[last] as Leaf<T>).count < tree.sizeMin) {
      // The full leaf before it has sizeMax entries: the two share them, each at least half full.
      const left = leaves[last - 1] as Leaf<T>;
      const right = leaves[last] as Leaf<T>;
      const evened = left.splitOff((left.count + right.count) >>> 1);
      evened.appendFrom(right, 0, right.count);
      leaves[last] = evened;
    }
    for (let index = 0; index < last; index += 1)
      (leaves[index] as Leaf<T>).next = leaves[index + 1];
    let level: Array<TreeNode<T>> = leaves;
    while (level.length > 1) {
      const parents: Array<Branch<T>> = [];
      for (let from = 0; from < level.length; from += sizeMax) {
        const children = level.slice(from, from + sizeMax);
        parents.push({ isLeaf: false, keys: children.map((child) => minKey(child)), children });
      }
      const lastParent = parents[parents.length - 1] as Branch<T>;
      if (parents.length > 1 && lastParent.children.length < tree.sizeMin) {
        const before = parents[parents.length - 2] as Branch<T>;
        const children = before.children.concat(lastParent.children);
        const half = children.length >>> 1;
        before.children = children.slice(0, half);
        before.keys = before.children.map((child) => minKey(child));
        lastParent.children = children.slice(half);
        lastParent.keys = lastParent.children.map((child) => minKey(child));
      }
      level = parents;
    }
    tree.root = level[0] as TreeNode<T>;
    tree.count = count;
    return tree;
  }

  /**
   * Calls `visit` for the entries overlapping [start, end), in order, without copying them: O(log n
   * + k).
   */
  visitOverlapping(start: number, end: number, visit: PieceVisitor<T>): void {
    let leaf: Leaf<T> | undefined = this.descend(start);
    let index = leaf.countStartsAtMost(start) - 1;
    if (index < 0 || leaf.end(index) <= start) index += 1;
    for (let leavesLeft = this.count + 1; leaf !== undefined; leavesLeft -= 1) {
      assert(leavesLeft > 0, 'interval map: leaf chain longer than the entry count');
      for (; index < leaf.count; index += 1) {
        if (leaf.start(index) >= end) return;
        leaf.visit(index, visit);
      }
      leaf = leaf.next;
      index = 0;
    }
  }

  insert(entry: Mapped<T>): void {
    const leaf = this.descend(entry.start);
    this.insertAt(leaf, leaf.countStartsAtMost(entry.start), entry);
  }

  /**
   * Inserts `entry` in one descent, joined with a touching neighbour of the same source, and
   * returns true; or returns false, changing nothing, when an entry overlaps it or a join would
   * cross leaves. Most inserts (random or sequential writes) qualify, and this costs a third of
   * finding the neighbours first and inserting after.
   */
  insertJoined(entry: Mapped<T>): boolean {
    const leaf = this.descend(entry.start);
    const index = leaf.countStartsAtMost(entry.start);
    // With exact branch keys, index 0 means that no entry anywhere starts at or before entry.start.
    const left = index > 0 ? leaf.entry(index - 1) : undefined;
    if (left !== undefined && left.end > entry.start) return false;
    const rightLeaf = index < leaf.count ? leaf : leaf.next;
    const rightIndex = index < leaf.count ? index : 0;
    const right = rightLeaf?.entry(rightIndex);
    if (right !== undefined && right.start < entry.end) return false;
    const joinLeft = left !== undefined && canJoin(left, entry);
    const joinRight = right !== undefined && canJoin(entry, right);
    if (joinRight && rightLeaf !== leaf) return false;
    if (joinLeft && joinRight) {
      leaf.setEnd(index - 1, right.end);
      this.removeAt(leaf, index);
    } else if (joinLeft) {
      leaf.setEnd(index - 1, entry.end);
    } else if (joinRight) {
      this.setStartAt(leaf, index, entry.start, entry.valueOffset);
    } else {
      this.insertAt(leaf, index, entry);
    }
    return true;
  }

  remove(start: number): void {
    const leaf = this.descend(start);
    this.removeAt(leaf, this.indexOfStart(leaf, start));
  }

  /** Cuts the front of the entry at `start` so that it begins at `newStart`, inside it. */
  trimStart(start: number, newStart: number): void {
    const leaf = this.descend(start);
    const index = this.indexOfStart(leaf, start);
    assert(newStart > start, 'interval map: trimStart must move the start forward');
    assert(newStart < leaf.end(index), 'interval map: trimStart past the entry end');
    this.setStartAt(leaf, index, newStart, leaf.entry(index).valueOffset + (newStart - start));
  }

  setEnd(start: number, end: number): void {
    const leaf = this.descend(start);
    leaf.setEnd(this.indexOfStart(leaf, start), end);
  }

  /** Copies of the entries that overlap [start, end), in order: O(log n + k). */
  overlapping(start: number, end: number): Array<Mapped<T>> {
    const found: Array<Mapped<T>> = [];
    this.visitOverlapping(start, end, (s, e, value, valueOffset) =>
      found.push({ start: s, end: e, value: value as T, valueOffset }),
    );
    return found;
  }

  /** Copies of every entry, in order. */
  *ascending(): Iterable<Mapped<T>> {
    let leaf: Leaf<T> | undefined = this.leftmostLeaf();
    for (let leavesLeft = this.count + 1; leaf !== undefined; leavesLeft -= 1) {
      assert(leavesLeft > 0, 'interval map: leaf chain longer than the entry count');
      for (let index = 0; index < leaf.count; index += 1) yield leaf.entry(index);
      leaf = leaf.next;
    }
  }

  checkInvariants(): void {
    const leaves: Array<Leaf<T>> = [];
    const counted = this.checkNode(this.root, true, leaves);
    assert(
      counted.entries === this.count,
      'interval map invariant: entry count differs from the tree',
    );
    let leaf: Leaf<T> | undefined = leaves[0];
    for (const expected of leaves) {
      assert(leaf === expected, 'interval map invariant: leaf chain out of tree order');
      leaf = leaf.next;
    }
    assert(leaf === undefined, 'interval map invariant: leaf chain runs past the last leaf');
  }

  /** Checks one subtree, appending its leaves in order; returns its height and entry count. */
  private checkNode(
    node: TreeNode<T>,
    isRoot: boolean,
    leaves: Array<Leaf<T>>,
  ): { height: number; entries: number } {
    const size = nodeSize(node);
    assert(size <= this.sizeMax, 'interval map invariant: node over capacity');
    assert(isRoot || size >= this.sizeMin, 'interval map invariant: node under half full');
    if (node.isLeaf) {
      node.checkInvariants();
      leaves.push(node);
      return { height: 0, entries: size };
    }
    assert(!isRoot || size >= 2, 'interval map invariant: branch root with one child');
    assert(
      node.keys.length === size,
      'interval map invariant: branch keys and children differ in count',
    );
    let height = -1;
    let entries = 0;
    node.children.forEach((child, index) => {
      assert(
        at(node.keys, index) === minKey(child),
        'interval map invariant: branch key is not its child minimum',
      );
      assert(
        index === 0 || at(node.keys, index - 1) < at(node.keys, index),
        'interval map invariant: branch keys out of order',
      );
      const counted = this.checkNode(child, false, leaves);
      assert(
        height === -1 || counted.height === height,
        'interval map invariant: leaves at different depths',
      );
      height = counted.height;
      entries += counted.entries;
    });
    return { height: height + 1, entries };
  }

  /** One slot past sizeMax: an insert lands first and the overfull leaf splits right after. */
  private newLeaf(): Leaf<T> {
    return new Leaf<T>(this.sizeMax + 1);
  }

  /** Walks from the root to the leaf whose range holds `key`, recording the path. */
  private descend(key: number): Leaf<T> {
    let node = this.root;
    this.pathDepth = 0;
    while (!node.isLeaf) {
      assert(this.pathDepth < DEPTH_MAX, 'interval map: tree deeper than DEPTH_MAX');
      // Keys below the first child's minimum still go to the first child.
      const index = Math.max(0, countKeysAtMost(node.keys, key) - 1);
      this.pathNodes[this.pathDepth] = node;
      this.pathIndexes[this.pathDepth] = index;
      this.pathDepth += 1;
      node = at(node.children, index);
    }
    return node;
  }

  private indexOfStart(leaf: Leaf<T>, start: number): number {
    const index = leaf.countStartsAtMost(start) - 1;
    assert(index >= 0, 'interval map: no entry has this start');
    assert(leaf.start(index) === start, 'interval map: no entry has this start');
    return index;
  }

  private leftmostLeaf(): Leaf<T> {
    let node = this.root;
    for (let depth = 0; !node.isLeaf; depth += 1) {
      assert(depth < DEPTH_MAX, 'interval map: tree deeper than DEPTH_MAX');
      node = at(node.children, 0);
    }
    return node;
  }

  /** Removes entry `index` of `leaf`, the leaf at the end of the current path. */
  private removeAt(leaf: Leaf<T>, index: number): void {
    leaf.remove(index);
    this.count -= 1;
    if (index === 0 && leaf.count > 0) this.updateMinKey(leaf.start(0));
    if (this.pathDepth > 0 && leaf.count < this.sizeMin) this.rebalance(this.pathDepth - 1);
  }

  /**
   * Moves the start of entry `index` of the path's leaf; it must stay between its neighbours'
   * ranges.
   */
  private setStartAt(leaf: Leaf<T>, index: number, start: number, valueOffset: number): void {
    assert(
      index === 0 || leaf.end(index - 1) <= start,
      'interval map: new start overlaps the entry before',
    );
    leaf.setStart(index, start, valueOffset);
    if (index === 0) this.updateMinKey(start);
  }

  /** Inserts at `index` of `leaf`, the leaf at the end of the current path. */
  private insertAt(leaf: Leaf<T>, index: number, entry: Mapped<T>): void {
    assert(
      index === 0 || leaf.start(index - 1) < entry.start,
      'interval map: two entries with one start',
    );
    leaf.insert(index, entry);
    this.count += 1;
    if (index === 0) this.updateMinKey(entry.start);
    if (leaf.count > this.sizeMax)
      this.insertChild(this.pathDepth - 1, splitLeaf(leaf, leaf.count >>> 1));
  }

  /**
   * The leaf at the end of the path has a new minimum: copy it up while it is also its parent's
   * minimum.
   */
  private updateMinKey(key: number): void {
    for (let depth = this.pathDepth - 1; depth >= 0; depth -= 1) {
      const index = at(this.pathIndexes, depth);
      at(this.pathNodes, depth).keys[index] = key;
      if (index !== 0) return;
    }
  }

  /**
   * Adds `child` right after the path's node at `depth`, splitting upwards while nodes overflow.
   */
  private insertChild(depth: number, child: TreeNode<T>): void {
    if (depth < 0) {
      this.root = {
        isLeaf: false,
        keys: [minKey(this.root), minKey(child)],
        children: [this.root, child],
      };
      return;
    }
    const parent = at(this.pathNodes, depth);
    const index = at(this.pathIndexes, depth) + 1;
    parent.keys.splice(index, 0, minKey(child));
    parent.children.splice(index, 0, child);
    if (parent.children.length <= this.sizeMax) return;
    const half = parent.children.length >>> 1;
    const right: Branch<T> = {
      isLeaf: false,
      keys: parent.keys.splice(half),
      children: parent.children.splice(half),
    };
    this.insertChild(depth - 1, right);
  }

  /**
   * The path's child under the node at `depth` is under half full: merge it with a sibling or even
   * them out.
   */
  private rebalance(depth: number): void {
    const parent = at(this.pathNodes, depth);
    const index = at(this.pathIndexes, depth);
    const leftIndex = index > 0 ? index - 1 : index;
    const left = at(parent.children, leftIndex);
    const right = at(parent.children, leftIndex + 1);
    if (nodeSize(left) + nodeSize(right) > this.sizeMax) {
      // Too many for one node: even them out; a new right node takes the old one's place.
      const evened = redistribute(left, right);
      parent.children[leftIndex + 1] = evened;
      parent.keys[leftIndex + 1] = minKey(evened);
      return;
    }
    merge(left, right);
    parent.keys.splice(leftIndex + 1, 1);
    parent.children.splice(leftIndex + 1, 1);
    if (depth === 0 && parent.children.length === 1) this.root = left;
    else if (depth > 0 && parent.children.length < this.sizeMin) this.rebalance(depth - 1);
  }
}

/** Moves the entries of `leaf` from `from` on into a new leaf, linked right after it. */
function splitLeaf<T>(leaf: Leaf<T>, from: number): Leaf<T> {
  const right = leaf.splitOff(from);
  right.next = leaf.next;
  leaf.next = right;
  return right;
}

function nodeSize<T>(node: TreeNode<T>): number {
  return node.isLeaf ? node.count : node.children.length;
}

function minKey<T>(node: TreeNode<T>): number {
  return node.isLeaf ? node.start(0) : at(node.keys, 0);
}

/** Moves everything from `right` into `left`; the caller drops `right` from the parent. */
function merge<T>(left: TreeNode<T>, right: TreeNode<T>): void {
  if (left.isLeaf && right.isLeaf) {
    left.appendFrom(right, 0, right.count);
    left.next = right.next;
  } else if (!left.isLeaf && !right.isLeaf) {
    left.keys.push(...right.keys);
    left.children.push(...right.children);
  } else {
    assert(false, 'interval map: siblings at different depths');
  }
}

/**
 * Splits the items of two siblings evenly; `left` keeps its first half, a new node (returned)
 * replaces `right`.
 */
function redistribute<T>(left: TreeNode<T>, right: TreeNode<T>): TreeNode<T> {
  const half = (nodeSize(left) + nodeSize(right)) >>> 1;
  if (left.isLeaf && right.isLeaf) {
    // Never merged into one leaf first: the total may exceed a leaf's capacity.
    if (left.count > half) {
      const evened = splitLeaf(left, half);
      evened.appendFrom(right, 0, right.count);
      evened.next = right.next;
      return evened;
    }
    const moved = half - left.count;
    left.appendFrom(right, 0, moved);
    const evened = right.splitOff(moved);
    evened.next = right.next;
    left.next = evened;
    return evened;
  }
  if (!left.isLeaf && !right.isLeaf) {
    const keys = left.keys.concat(right.keys);
    const children = left.children.concat(right.children);
    left.keys = keys.slice(0, half);
    left.children = children.slice(0, half);
    return { isLeaf: false, keys: keys.slice(half), children: children.slice(half) };
  }
  assert(false, 'interval map: siblings at different depths');
}

/** Number of leading keys <= `key` (keys sorted ascending). */
function countKeysAtMost(keys: readonly number[], key: number): number {
  let low = 0;
  let high = keys.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (at(keys, middle) <= key) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** The unmapped runs of [start, end) between `entries`, which overlap it and are in order. */
function gapsBetween<T>(entries: ReadonlyArray<Mapped<T>>, start: number, end: number): Gap[] {
  const gaps: Gap[] = [];
  let position = start;
  for (const entry of entries) {
    if (entry.start > position) gaps.push(gapPiece(position, entry.start));
    position = Math.max(position, entry.end);
  }
  if (position < end) gaps.push(gapPiece(position, end));
  return gaps;
}

/** The part [start, end) of `entry` as a new entry, its offset moved along with its start. */
function clip<T>(entry: Mapped<T>, start: number, end: number): Mapped<T> {
  return { start, end, value: entry.value, valueOffset: entry.valueOffset + (start - entry.start) };
}

function gapPiece(start: number, end: number): Gap {
  return { start, end, value: undefined, valueOffset: 0 };
}

/**
 * Touching entries of one source whose offsets continue can be one entry without changing any byte.
 */
function canJoin<T>(left: Mapped<T>, right: Mapped<T>): boolean {
  return (
    left.end === right.start &&
    left.value === right.value &&
    left.valueOffset + (left.end - left.start) === right.valueOffset
  );
}

function isPosition(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= POSITION_MAX;
}

function assertRange(start: number, end: number): void {
  assert(isPosition(start), 'interval map: start is not an integer in [0, 2^53]');
  assert(isPosition(end), 'interval map: end is not an integer in [0, 2^53]');
  assert(start < end, 'interval map: empty range (start >= end)');
}

function assertValueOffset(valueOffset: number, length: number): void {
  assert(isPosition(valueOffset), 'interval map: valueOffset is not an integer in [0, 2^53]');
  assert(valueOffset + length <= POSITION_MAX, 'interval map: valueOffset + length beyond 2^53');
}

/** Indexing that asserts the item exists (the tree never stores undefined items). */
function at<V>(items: readonly V[], index: number): V {
  const item = items[index];
  assert(item !== undefined, 'interval map: index out of bounds');
  return item;
}
