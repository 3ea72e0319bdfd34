/**
 * Waiting for a condition instead of for time: tests that depend on something
 * settling elsewhere (a DHT record stored, a connection identified, a background
 * pass done) poll for it. The deadline only bounds a failure, so it is generous: a
 * loaded machine makes things slow, not wrong.
 */
import { setTimeout as sleep } from 'node:timers/promises'

export interface UntilOptions {
  /** How long to keep polling before failing. @default 30_000 */
  timeout?: number
  /** Pause between checks (a check's own time comes on top). @default 25 */
  interval?: number
}

/** Resolves once `check` returns true; throws naming `what` when the deadline passes first. */
export async function until (what: string, check: () => boolean | Promise<boolean>, options: UntilOptions = {}): Promise<void> {
  const deadline = Date.now() + (options.timeout ?? 30_000)
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(options.interval ?? 25)
  }
}
