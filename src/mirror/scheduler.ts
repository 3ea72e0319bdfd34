/**
 * The re-check scheduler: every pinned repo is re-checked at start and then every
 * `intervalMs`, through the per-DID runner.
 *
 * A tick hands each pinned DID that has no job in the runner (a re-check still
 * running, or a sync someone asked for) to the runner and does not wait for them:
 * one repo whose host is slow holds its own DID and one slot, never the next tick
 * of the others. Re-checks of repos whose last check failed wait behind the others
 * for a slot, so a healthy repo is not queued behind hosts that keep failing (slow
 * ones fail on the download's throughput floor, see PdsClient). One repo failing is
 * logged by the check function and the rest go on.
 *
 * A repo a tick leaves out (`skip`: a followed firehose keeps it current, and an
 * active repo's events may keep it from ever being polled) still gets the tick's
 * `light` job: the checks no event would bring (a blob taken down at the PDS).
 */
import { repeatingTask, type RepeatingTask } from '@libp2p/utils'
import { logger } from '@libp2p/logger'
import type { DidRunner } from './runner.ts'

const log = logger('atmirror:mirror:scheduler')

/** Runner priorities: a request someone waits for, a re-check, a re-check of a repo that failed last time. */
export const PRIORITY = { request: 2, check: 1, retry: 0 } as const

/** setTimeout cannot wait longer than 2^31-1 ms; a larger value would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1

export interface RepoSchedulerComponents {
  /** The pinned DIDs. */
  pins: { list: () => Promise<string[]> }
  runner: DidRunner
  /**
   * Re-checks one repo; it runs inside the runner's job for the DID and reports its
   * own failures (the scheduler only notes that it failed).
   */
  check: (did: string, options: { signal: AbortSignal }) => Promise<unknown>
  /**
   * Repos a tick leaves out: those kept current by a followed firehose (the
   * follower says which), re-checked only at its slower interval.
   */
  skip?: (did: string) => boolean
  /**
   * What a tick runs for the repos it leaves out (`skip`), in the DID's runner job
   * at the lowest priority: cheap checks that pace themselves (it runs every tick).
   */
  light?: (did: string, options: { signal: AbortSignal }) => Promise<unknown>
}

export interface RepoSchedulerInit {
  /**
   * Milliseconds between re-checks of every pinned repo; 0 checks only at start.
   *
   * @default 60000
   */
  intervalMs?: number
  /**
   * Re-check every pinned repo when the scheduler starts.
   *
   * @default true
   */
  checkOnStart?: boolean
}

export class RepoScheduler {
  readonly #pins: RepoSchedulerComponents['pins']
  readonly #runner: DidRunner
  readonly #check: RepoSchedulerComponents['check']
  readonly #skip: (did: string) => boolean
  readonly #light: RepoSchedulerComponents['light']
  readonly #intervalMs: number
  readonly #checkOnStart: boolean
  /** DIDs whose last re-check failed: they wait behind the others for a slot. */
  readonly #failing = new Set<string>()
  readonly #checks = new Set<Promise<void>>()
  #task: RepeatingTask | undefined
  #stopping = new AbortController()

  constructor (components: RepoSchedulerComponents, init: RepoSchedulerInit = {}) {
    this.#pins = components.pins
    this.#runner = components.runner
    this.#check = components.check
    this.#skip = components.skip ?? (() => false)
    this.#light = components.light
    this.#intervalMs = Math.min(Math.max(0, init.intervalMs ?? 60_000), MAX_TIMER_MS)
    this.#checkOnStart = init.checkOnStart ?? true
  }

  /** Milliseconds between re-checks (0: only at start). */
  get intervalMs (): number {
    return this.#intervalMs
  }

  start (): void {
    if (this.#task !== undefined) return
    this.#stopping = new AbortController()
    if (this.#intervalMs > 0) {
      this.#task = repeatingTask(async () => { this.#tick() }, this.#intervalMs, { runImmediately: this.#checkOnStart })
      this.#task.start()
    } else if (this.#checkOnStart) {
      this.#tick()
    }
  }

  /** Stops the ticks and aborts the re-checks it started, waiting until they have settled. */
  async stop (): Promise<void> {
    this.#task?.stop()
    this.#task = undefined
    this.#stopping.abort(new DOMException('the scheduler is stopping', 'AbortError'))
    await Promise.allSettled([...this.#checks])
  }

  /**
   * Re-checks every pinned repo that has no job in the runner now, and waits for
   * those re-checks (what one tick does, without the waiting).
   */
  async checkAll (): Promise<void> {
    const dids = (await this.#pins.list()).filter(did => !this.#runner.busy(did))
    // the runner's priorities order the jobs that wait; the first ones start at once
    const order = (did: string): number => this.#failing.has(did) ? 1 : 0
    dids.sort((a, b) => order(a) - order(b))
    await Promise.all(dids.map(async did => { await this.#checkOne(did) }))
  }

  /** Forgets a DID (unpinned). */
  forget (did: string): void {
    this.#failing.delete(did)
  }

  #tick (): void {
    this.#checkDue().catch(err => { log.error('re-check pass failed - %e', err) })
  }

  async #checkDue (): Promise<void> {
    const idle = (await this.#pins.list()).filter(did => !this.#runner.busy(did))
    const dids = idle.filter(did => !this.#skip(did))
    const skipped = idle.filter(did => this.#skip(did))
    const order = (did: string): number => this.#failing.has(did) ? 1 : 0
    dids.sort((a, b) => order(a) - order(b))
    await Promise.all([
      ...dids.map(async did => { await this.#checkOne(did) }),
      ...skipped.map(async did => { await this.#lightOne(did) })
    ])
  }

  async #lightOne (did: string): Promise<void> {
    const light = this.#light
    if (light === undefined) return
    const job = this.#runner.run(did, async (signal) => await light(did, { signal }), {
      signal: this.#stopping.signal,
      priority: PRIORITY.retry
    }).then(() => {}, (err) => { if (!this.#stopping.signal.aborted) log('light check of %s failed - %e', did, err) })
    this.#checks.add(job)
    try {
      await job
    } finally {
      this.#checks.delete(job)
    }
  }

  async #checkOne (did: string): Promise<void> {
    const check = this.#runner.run(did, async (signal) => await this.#check(did, { signal }), {
      signal: this.#stopping.signal,
      priority: this.#failing.has(did) ? PRIORITY.retry : PRIORITY.check
    }).then(() => { this.#failing.delete(did) }, () => { this.#failing.add(did) })
    this.#checks.add(check)
    try {
      await check
    } finally {
      this.#checks.delete(check)
    }
  }
}
