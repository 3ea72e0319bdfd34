/**
 * The sync progress display of `atmirror mirror`: phase, blocks, bytes, rate.
 *
 * A sync reports progress often: per written batch while the CAR streams in, and
 * per block while the walk fetches what the download lacked (through getBlocks or
 * Bitswap, thousands a second). Drawing each report would flood the terminal, so
 * every phase is throttled alike: at most one line per `intervalMs`, the latest
 * report drawn when the interval is over (so a phase that then goes quiet, such as
 * verification, still shows), and a final line with the last figures on `done()`.
 */
import type { SyncProgress } from '../../src/mirror/sync.ts'
import type { CommandContext } from './context.ts'
import { formatBytes } from './node-options.ts'

export interface ProgressLineInit {
  /**
   * Redraw one line in place (a terminal); otherwise print one plain line per
   * update (logs, `--progress` on a pipe).
   */
  tty: boolean
  /** Least time between two drawn updates, in ms. @default 100 */
  intervalMs?: number
  /** The clock, in ms. @default performance.now */
  now?: () => number
}

/**
 * The progress line of a syncing verb, or undefined when none shows: on a terminal
 * without --json, or anywhere with --progress.
 */
export function progressFor (ctx: CommandContext, flags: { progress?: boolean, json: boolean }): ProgressLine | undefined {
  const tty = ctx.stderr.isTTY === true
  return flags.progress === true || (!flags.json && tty) ? new ProgressLine(ctx.stderr, { tty }) : undefined
}

/** A throttled progress line on a stream (stderr). */
export class ProgressLine {
  readonly #out: { write: (text: string) => unknown }
  readonly #tty: boolean
  readonly #intervalMs: number
  readonly #now: () => number
  readonly #started: number
  #latest: SyncProgress | undefined
  #drawn: SyncProgress | undefined
  #lastDraw = -Infinity
  #timer: NodeJS.Timeout | undefined
  #done = false

  constructor (out: { write: (text: string) => unknown }, init: ProgressLineInit) {
    this.#out = out
    this.#tty = init.tty
    this.#intervalMs = Math.max(0, init.intervalMs ?? 100)
    this.#now = init.now ?? (() => performance.now())
    this.#started = this.#now()
  }

  /** Takes a report; draws it now or when the interval is over. */
  update (progress: SyncProgress): void {
    if (this.#done) return
    this.#latest = { ...progress }
    const wait = this.#lastDraw + this.#intervalMs - this.#now()
    if (wait <= 0) {
      this.#draw()
      return
    }
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined
        this.#draw()
      }, wait)
      this.#timer.unref()
    }
  }

  /** The callback to hand a sync. */
  readonly onProgress = (progress: SyncProgress): void => { this.update(progress) }

  /** Draws the last report (if any) as the final line and ends it. Idempotent. */
  done (): void {
    if (this.#done) return
    this.#done = true
    clearTimeout(this.#timer)
    this.#timer = undefined
    if (this.#latest === undefined) return
    // the last figures, and the end of the line on a terminal
    if (this.#latest !== this.#drawn) this.#draw(true)
    else if (this.#tty) this.#out.write('\n')
  }

  #draw (final = false): void {
    const p = this.#latest
    if (p === undefined) return
    const now = this.#now()
    this.#lastDraw = now
    this.#drawn = p
    const text = formatProgress(p, (now - this.#started) / 1000)
    if (this.#tty) this.#out.write(`\r\x1b[K${text}${final ? '\n' : ''}`)
    else this.#out.write(`${text}\n`)
  }
}

/** `walk     1234 blocks  1.2 MiB  3.4 MiB/s`; the blob pass: `blobs    3 blobs  12.5 MiB  4.0 MiB/s (1234 blocks, 1.2 MiB)` */
export function formatProgress (p: SyncProgress, seconds: number): string {
  if (p.phase === 'blobs') {
    const blobBytes = p.blobBytes ?? 0
    return `${p.phase.padEnd(8)} ${p.blobs ?? 0} blobs  ${formatBytes(blobBytes)}  ${formatBytes(blobBytes / Math.max(seconds, 0.001))}/s (${p.blocks} blocks, ${formatBytes(p.bytes)})`
  }
  const rate = p.bytes / Math.max(seconds, 0.001)
  return `${p.phase.padEnd(8)} ${p.blocks} blocks  ${formatBytes(p.bytes)}  ${formatBytes(rate)}/s`
}
