/** A small typed event emitter: `on` returns the function that unsubscribes. */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  private listeners: { [K in keyof Events]?: Set<(e: Events[K]) => void> } = {};

  on<K extends keyof Events>(kind: K, fn: (e: Events[K]) => void): () => void {
    const set = (this.listeners[kind] ??= new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  protected emit<K extends keyof Events>(kind: K, event: Events[K]): void {
    for (const fn of this.listeners[kind] ?? []) {
      try {
        fn(event);
      } catch (e) {
        // A listener's bug must not break the connection's state machine.
        console.error("im-sdk: listener failed", e);
      }
    }
  }
}
