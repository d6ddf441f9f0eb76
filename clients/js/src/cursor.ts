// Where each channel stands (offset + epoch, contract section 6): what a
// reconnect resumes from, and the filter that drops an offset seen before.
// Invariant: a channel's stored offset only grows within one epoch; it is
// reset only by the server (a `resync`, or a resume answered `recovered:false`).

/** A channel's position in its history. */
export interface Position {
  offset: number;
  epoch: string;
}

/** Per-channel positions, keyed by wire channel name (`room:lobby`, `user:alice`, `broadcast`). */
export class Cursors {
  private readonly positions = new Map<string, Position>();

  /** The position to resume `channel` from, if known. */
  get(channel: string): Position | undefined {
    const p = this.positions.get(channel);
    return p && p.epoch !== "" ? { offset: p.offset, epoch: p.epoch } : undefined;
  }

  /**
   * Records a subscribe reply (or the `welcome` for the user and broadcast
   * channels). `asked`: whether the request carried a resume position.
   * Returns true when continuity was lost (the caller surfaces `resync`).
   */
  settle(channel: string, position: Position | undefined, recovered: boolean | undefined, asked: boolean): boolean {
    if (!position) {
      // A channel without history: nothing to resume, nothing to deduplicate.
      this.positions.delete(channel);
      return false;
    }
    const mine = this.positions.get(channel);
    if (asked && recovered === true && mine) {
      // The missed events follow the reply and advance the cursor themselves.
      mine.epoch = position.epoch;
      return false;
    }
    this.positions.set(channel, { offset: position.offset, epoch: position.epoch });
    return asked && recovered !== true;
  }

  /** An event arrived: false when it is a duplicate (offset already seen). */
  accept(channel: string, offset: number | undefined): boolean {
    if (typeof offset !== "number") return true;
    const p = this.positions.get(channel);
    if (!p) {
      this.positions.set(channel, { offset, epoch: "" });
      return true;
    }
    if (offset <= p.offset) return false;
    p.offset = offset;
    return true;
  }

  /** The server said events up to `offset` (of `epoch`) are lost: continue after it. */
  resync(channel: string, offset: number, epoch: string): void {
    this.positions.set(channel, { offset, epoch });
  }

  /** Forgets `channel` (unsubscribed). */
  delete(channel: string): void {
    this.positions.delete(channel);
  }
}
