/**
 * The per-DID runner: at most one job in flight per DID, and at most `concurrency`
 * jobs running over all DIDs. Every job that touches one repo (a scheduled re-check,
 * a sync or unpin asked through the API, and later a firehose event) goes through it.
 *
 * Shaped like @atproto/sync's MemoryRunner (a queue per DID plus a global limit),
 * with the order turned around: a job first waits for its DID's earlier jobs and
 * only then for a global slot, so a DID with a job running never holds a slot while
 * it waits. Slots are given out by priority (higher first, then in arrival order):
 * a request someone waits for goes before a background re-check.
 *
 * `abort(did)` aborts the DID's running and waiting jobs at once (unpin uses it: a
 * sync stuck on a slow host must not hold the unpin). A job's promise settles only
 * once its function has settled, so nothing is left running behind a caller; the
 * function sees the abort through its signal and is expected to unwind promptly.
 */
import { Queue } from '@libp2p/utils'
import { logger } from '@libp2p/logger'

const log = logger('atmirror:mirror:runner')

export interface DidRunnerInit {
  /**
   * Jobs running at once over all DIDs (jobs that take no slot are not counted).
   *
   * @default 4
   */
  concurrency?: number
}

export interface DidJobOptions {
  signal?: AbortSignal
  /**
   * Among jobs waiting for a slot, higher runs first; equal priorities run in the
   * order they came.
   *
   * @default 0
   */
  priority?: number
  /**
   * Whether the job takes one of the global slots. A short job that only needs to
   * be alone on its DID (unpin) takes none, so it never waits behind other repos.
   *
   * @default true
   */
  slot?: boolean
}

interface SlotJobOptions {
  signal?: AbortSignal
  priority: number
}

/** What one DID has in the runner. */
interface Lane {
  /** Settles when the DID's last job so far has settled. */
  tail: Promise<void>
  /** The controllers of the DID's jobs, waiting or running. */
  jobs: Set<AbortController>
  running: number
}

export class DidRunner {
  readonly #slots: Queue<unknown, SlotJobOptions>
  readonly #lanes = new Map<string, Lane>()
  readonly #work = new Set<Promise<unknown>>()
  #stopping = new AbortController()

  constructor (init: DidRunnerInit = {}) {
    this.#slots = new Queue({
      concurrency: Math.max(1, init.concurrency ?? 4),
      sort: (a, b) => Math.sign(b.options.priority - a.options.priority) as -1 | 0 | 1
    })
  }

  /** Jobs running at once over all DIDs. */
  get concurrency (): number {
    return this.#slots.concurrency
  }

  /**
   * Runs `fn` once the DID's earlier jobs have settled and a slot is free. The
   * signal `fn` gets fires when the caller's signal does, on `abort(did)` and on
   * `stop()`; a job aborted while it waits never runs.
   */
  async run<T> (did: string, fn: (signal: AbortSignal) => Promise<T>, options: DidJobOptions = {}): Promise<T> {
    const controller = new AbortController()
    const signals = [controller.signal, this.#stopping.signal]
    if (options.signal !== undefined) signals.push(options.signal)
    const signal = AbortSignal.any(signals)
    const lane = this.#lane(did)
    lane.jobs.add(controller)
    const previous = lane.tail
    let done!: () => void
    const mine = new Promise<void>(resolve => { done = resolve })
    lane.tail = previous.then(async () => { await mine })
    const job = this.#job(lane, previous, signal, fn, options)
    this.#work.add(job)
    try {
      return await job
    } finally {
      this.#work.delete(job)
      lane.jobs.delete(controller)
      done()
      if (lane.jobs.size === 0 && this.#lanes.get(did) === lane) this.#lanes.delete(did)
    }
  }

  /** Whether the DID has a job waiting or running. */
  busy (did: string): boolean {
    return this.#lanes.has(did)
  }

  /** Whether a job of the DID is running now (not only waiting). */
  running (did: string): boolean {
    return (this.#lanes.get(did)?.running ?? 0) > 0
  }

  /** Aborts every job of the DID, running or waiting; jobs added afterwards run as usual. */
  abort (did: string, reason: unknown = new DOMException('the job was aborted', 'AbortError')): void {
    const lane = this.#lanes.get(did)
    if (lane === undefined) return
    log('aborting %d job(s) of %s', lane.jobs.size, did)
    for (const controller of lane.jobs) controller.abort(reason)
  }

  /** Aborts every job and waits until all have settled. The runner can be used again afterwards. */
  async stop (): Promise<void> {
    this.#stopping.abort(new DOMException('the runner is stopping', 'AbortError'))
    await Promise.allSettled([...this.#work])
    this.#stopping = new AbortController()
  }

  async #job<T> (lane: Lane, previous: Promise<void>, signal: AbortSignal, fn: (signal: AbortSignal) => Promise<T>, options: DidJobOptions): Promise<T> {
    await untilAborted(previous, signal)
    signal.throwIfAborted()
    if (options.slot === false) return await this.#running(lane, fn, signal)
    // the queue rejects a job at once when its signal fires, even a running one, and
    // frees its slot then (a job that unwinds slowly may briefly overlap the next):
    // keep the function's own promise so the DID is only released once it has settled
    let work: Promise<T> | undefined
    try {
      return await this.#slots.add(async () => {
        work = this.#running(lane, fn, signal)
        return await work
      }, { signal, priority: options.priority ?? 0 }) as T
    } finally {
      await work?.catch(() => {})
    }
  }

  async #running<T> (lane: Lane, fn: (signal: AbortSignal) => Promise<T>, signal: AbortSignal): Promise<T> {
    lane.running++
    try {
      return await fn(signal)
    } finally {
      lane.running--
    }
  }

  #lane (did: string): Lane {
    let lane = this.#lanes.get(did)
    if (lane === undefined) {
      lane = { tail: Promise.resolve(), jobs: new Set(), running: 0 }
      this.#lanes.set(did, lane)
    }
    return lane
  }
}

/** Waits for `promise`, or until `signal` fires (whichever comes first); never rejects. */
async function untilAborted (promise: Promise<void>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return
  let onAbort: (() => void) | undefined
  try {
    await Promise.race([promise, new Promise<void>(resolve => {
      onAbort = resolve
      signal.addEventListener('abort', onAbort, { once: true })
    })])
  } finally {
    if (onAbort !== undefined) signal.removeEventListener('abort', onAbort)
  }
}
