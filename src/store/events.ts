// The cluster's event log in etcd: bounded, oldest dropped first. Keys sort by
// time, so "the last N" is a descending range read.
import { randomBytes } from 'node:crypto';
import type { Etcd3, Watcher } from 'etcd3';
import type { EventDraft } from '../core/node-status';
import type { ClusterEvent } from '../core/types';
import { keys } from './keys';

export const DEFAULT_EVENT_LIMIT = 2000;

/** A key suffix that sorts by time and never collides between writers. */
function newEventId(now: Date): string {
  return `${now.getTime().toString().padStart(14, '0')}-${randomBytes(4).toString('hex')}`;
}

export class EventLog {
  private writesSinceTrim = 0;

  constructor(
    private readonly etcd: Etcd3,
    private readonly limit = DEFAULT_EVENT_LIMIT,
  ) {}

  /** The key and value of a new event, for callers that write it inside their own transaction. */
  static record(draft: EventDraft, now = new Date()): { key: string; value: string; event: ClusterEvent } {
    const event: ClusterEvent = { id: newEventId(now), time: now.toISOString(), ...draft };
    return { key: keys.event(event.id), value: JSON.stringify(event), event };
  }

  async write(draft: EventDraft, now = new Date()): Promise<ClusterEvent> {
    const { key, value, event } = EventLog.record(draft, now);
    await this.etcd.put(key).value(value);
    await this.written(1);
    return event;
  }

  /** Tell the log that `n` events were written (here or in a caller's transaction). */
  async written(n: number): Promise<void> {
    // Trimming costs a count; doing it every few writes keeps the log within
    // limit + a few entries.
    this.writesSinceTrim += n;
    if (this.writesSinceTrim >= 10) {
      this.writesSinceTrim = 0;
      await this.trim();
    }
  }

  /** Drop the oldest events beyond the limit. */
  async trim(): Promise<void> {
    const count = await this.etcd.getAll().prefix(keys.eventsPrefix).count();
    const excess = count - this.limit;
    if (excess <= 0) return;
    const oldest = await this.etcd.getAll().prefix(keys.eventsPrefix).sort('Key', 'Ascend').limit(excess).keys();
    if (oldest.length === 0) return;
    await this.etcd.delete().inRange({ start: oldest[0], end: `${oldest[oldest.length - 1]}\0` });
  }

  /** The last `n` events, oldest first. */
  async last(n: number): Promise<ClusterEvent[]> {
    const values = await this.etcd.getAll().prefix(keys.eventsPrefix).sort('Key', 'Descend').limit(n).strings();
    return Object.values(values)
      .map((v) => JSON.parse(v) as ClusterEvent)
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Call `onEvent` for every event written from now on; returns the watcher to cancel. */
  async follow(onEvent: (event: ClusterEvent) => void): Promise<Watcher> {
    const watcher = await this.etcd.watch().prefix(keys.eventsPrefix).create();
    watcher.on('put', (kv) => onEvent(JSON.parse(kv.value.toString()) as ClusterEvent));
    return watcher;
  }
}
