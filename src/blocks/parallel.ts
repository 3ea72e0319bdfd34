/**
 * The concurrency tools of atmirror, in one place (queues with priorities and
 * per-key order are the per-DID runner's, and timers at a fixed interval the
 * scheduler's, both on @libp2p/utils):
 *
 * - {@link parallel}: map a source through `fn`, results as they come;
 * - {@link eachParallel}: run `fn` for every item, for effect only;
 * - {@link Alarm}: one pending call that can be moved or dropped (a retry that
 *   backs off beside a periodic pass, a bounded wait).
 *
 * Both pools refill a slot the moment a call settles, read their source lazily,
 * stop intake at the first failure and rethrow it once the calls in flight have
 * settled: nothing is left running behind the caller.
 */

/** setTimeout cannot wait longer than 2^31-1 ms; a larger value would fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1

/**
 * Maps `source` through `fn` with at most `concurrency` calls in flight, yielding
 * results in completion order. Calls go on while the consumer is busy with what it
 * was handed, until `concurrency` results wait for it (then the pool waits too).
 * The first failure stops intake; the results that were ready are yielded, then it
 * is thrown once the calls in flight have settled. A consumer that stops early
 * waits for the calls in flight (a caller that wants them cut short aborts them).
 */
export async function * parallel<T, R> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<R>, concurrency: number): AsyncGenerator<R> {
  const limit = Math.max(1, concurrency)
  const ready: R[] = []
  const room: Array<() => void> = []
  let wake: (() => void) | undefined
  let closed = false
  let ended: { ok: true } | { ok: false, error: unknown } | undefined
  const notify = (): void => {
    const w = wake
    wake = undefined
    w?.()
  }
  const pool = runPool(source, async (item) => {
    const value = await fn(item)
    if (closed) return
    ready.push(value)
    notify()
    // the consumer is behind: hold this slot until it takes what is waiting
    while (ready.length >= limit && !closed) await new Promise<void>(resolve => { room.push(resolve) })
  }, limit, () => closed).then(() => { ended = { ok: true } }, error => { ended = { ok: false, error } }).finally(notify)
  try {
    while (true) {
      if (ready.length > 0) {
        const batch = ready.splice(0)
        for (const resume of room.splice(0)) resume()
        for (const value of batch) yield value
        continue
      }
      if (ended !== undefined) break
      await new Promise<void>(resolve => { wake = resolve })
    }
    if (ended?.ok === false) throw ended.error
  } finally {
    closed = true
    for (const resume of room.splice(0)) resume()
    await pool
  }
}

/**
 * Calls `fn` for every item of `source` (an array or any iterable, read lazily),
 * with at most `concurrency` calls in flight. The first failure stops intake and
 * is thrown once the calls in flight have settled.
 */
export async function eachParallel<T> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<void>, concurrency: number): Promise<void> {
  await runPool(source, fn, concurrency, () => false)
}

/** The workers behind both pools; `stopped` ends intake early (the consumer left). */
async function runPool<T> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<void>, concurrency: number, stopped: () => boolean): Promise<void> {
  const iterator = (Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]()) as AsyncIterator<T> | Iterator<T>
  let failure: { error: unknown } | undefined
  let exhausted = false
  const worker = async (): Promise<void> => {
    while (failure === undefined && !exhausted && !stopped()) {
      let next: IteratorResult<T>
      try {
        next = await iterator.next()
      } catch (err) {
        failure ??= { error: err }
        return
      }
      if (next.done === true) {
        exhausted = true
        return
      }
      try {
        await fn(next.value)
      } catch (err) {
        failure ??= { error: err }
      }
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker))
  } finally {
    if (!exhausted) await iterator.return?.()
  }
  if (failure !== undefined) throw failure.error
}

/**
 * One pending call of `fn`: {@link set} (re)schedules it `ms` from now, {@link clear}
 * drops it, {@link due} says when it will run. The timer never keeps the process
 * alive on its own.
 */
export class Alarm {
  readonly #fn: () => void
  #timer: NodeJS.Timeout | undefined
  #due: number | undefined

  constructor (fn: () => void) {
    this.#fn = fn
  }

  /** When the call is due (ms since the epoch), or undefined when none is pending. */
  get due (): number | undefined {
    return this.#due
  }

  /** Schedules the call `ms` from now (at most {@link MAX_TIMER_MS}), in place of any pending one. */
  set (ms: number): void {
    this.clear()
    const delay = Math.min(Math.max(0, ms), MAX_TIMER_MS)
    this.#due = Date.now() + delay
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.#due = undefined
      this.#fn()
    }, delay)
    this.#timer.unref()
  }

  /** Drops the pending call, if any. */
  clear (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    this.#due = undefined
  }
}
