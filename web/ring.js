// A fixed-capacity ring buffer: push is O(1) and the oldest entry falls out when full.
// The event log keeps its bounded history here.

export class RingBuffer {
  /** @param {number} capacity the most entries kept */
  constructor(capacity) {
    this.capacity = capacity;
    this.items = new Array(capacity);
    this.start = 0; // index of the oldest entry
    this.length = 0;
  }

  /** Append; returns the entry that fell out (or undefined). */
  push(item) {
    if (this.length < this.capacity) {
      this.items[(this.start + this.length) % this.capacity] = item;
      this.length += 1;
      return undefined;
    }
    const dropped = this.items[this.start];
    this.items[this.start] = item;
    this.start = (this.start + 1) % this.capacity;
    return dropped;
  }

  /** The i-th newest entry: newest(0) is the last pushed. */
  newest(i) {
    if (i < 0 || i >= this.length) return undefined;
    return this.items[(this.start + this.length - 1 - i) % this.capacity];
  }

  /** Entries newest first, as a new array. */
  toNewestFirst() {
    const out = new Array(this.length);
    for (let i = 0; i < this.length; i += 1) out[i] = this.newest(i);
    return out;
  }

  clear() {
    this.items = new Array(this.capacity);
    this.start = 0;
    this.length = 0;
  }
}
