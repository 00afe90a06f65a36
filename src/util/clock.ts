// Time as a dependency: production code asks a Clock for the time and for
// timers, so the deterministic simulation can run the same code on a seeded,
// virtual clock.

export interface Timer {
  cancel(): void;
}

export interface Clock {
  now(): number;
  /** Run `fn` after `ms` milliseconds (never keeps the process alive by itself). */
  setTimer(ms: number, fn: () => void): Timer;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimer(ms, fn) {
    const t = setTimeout(fn, ms);
    t.unref();
    return { cancel: () => clearTimeout(t) };
  },
};

export function sleep(clock: Clock, ms: number): Promise<void> {
  return new Promise((resolve) => clock.setTimer(ms, resolve));
}
