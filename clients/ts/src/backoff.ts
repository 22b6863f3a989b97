/** How long to wait before reconnect attempt `attempt` (0-based). */
export interface Backoff {
  /** The first delay's ceiling. */
  initialMs: number;
  /** No delay is longer: a client offline for an hour retries every `maxMs`. */
  maxMs: number;
}

/** 0.5 s doubling to 30 s: quick after a blip, gentle on a gateway that restarts under thousands of clients. */
export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 30_000 };

/**
 * "Full jitter": uniform in [ceiling/2, ceiling], the ceiling doubling per
 * attempt up to `maxMs`. Jitter spreads a crowd of clients cut by one
 * gateway restart; the lower half-bound keeps a single client from hammering.
 */
export function backoffDelay(attempt: number, backoff: Backoff, random: () => number): number {
  const ceiling = Math.min(backoff.maxMs, backoff.initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
