/**
 * The progress display of `atmirror mirror`: throttled alike in every phase (the
 * walk reports once per fetched block), the latest figures drawn when the interval
 * is over, and a final line. A mocked clock drives it; the mirror e2e test runs
 * the real command with --progress.
 */
import assert from 'node:assert/strict'
import { afterEach, beforeEach, describe, it, mock } from 'node:test'
import { ProgressLine, formatProgress } from '../../bin/commands/progress.ts'
import type { SyncProgress } from '../../src/mirror/sync.ts'

const DID = 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa'

/** Collects what is written, as the stream sees it. */
function sink (): { out: { write: (text: string) => boolean }, writes: string[] } {
  const writes: string[] = []
  return { out: { write: (text: string) => { writes.push(text); return true } }, writes }
}

const at = (phase: SyncProgress['phase'], blocks: number): SyncProgress => ({ did: DID, phase, blocks, bytes: blocks * 100 })

describe('ProgressLine', () => {
  beforeEach(() => { mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 }) })
  afterEach(() => { mock.timers.reset() })

  it('draws a walk that reports every block at most 10 times a second, then a final line', () => {
    const { out, writes } = sink()
    const line = new ProgressLine(out, { tty: true, now: () => Date.now() })
    // 3 seconds of a walk fetching 1,000 blocks a second, one report per block
    let blocks = 0
    for (let ms = 0; ms < 3000; ms++) {
      line.update(at('walk', ++blocks))
      mock.timers.tick(1)
    }
    assert.ok(writes.length <= 31, `${writes.length} draws in 3 s`)
    assert.ok(writes.length >= 29, `${writes.length} draws in 3 s`)
    for (const text of writes) assert.match(text, /^\r\x1b\[Kwalk {5}\d+ blocks {2}/)
    line.done()
    // the last figures are on screen, and the line is ended
    assert.ok(writes.join('').endsWith(`\r\x1b[K${formatProgress(at('walk', 3000), 3)}\n`), JSON.stringify(writes.slice(-2)))
  })

  it('throttles the download and the phase changes alike, and shows the latest report once the interval is over', () => {
    const { out, writes } = sink()
    const line = new ProgressLine(out, { tty: false, now: () => Date.now() })
    line.update(at('head', 0))
    line.update(at('download', 0))
    line.update(at('download', 256))
    line.update(at('walk', 256))
    line.update(at('verify', 256))
    assert.deepEqual(writes, [formatProgress(at('head', 0), 0) + '\n'])
    // nothing more is reported (verification takes a while): the latest is drawn when due
    mock.timers.tick(99)
    assert.equal(writes.length, 1)
    mock.timers.tick(1)
    assert.deepEqual(writes.slice(1), [formatProgress(at('verify', 256), 0.1) + '\n'])
    // already drawn: the final line adds nothing on a pipe
    line.done()
    assert.equal(writes.length, 2)
  })

  it('done() draws the last figures when they were not drawn yet, once, and nothing after it', () => {
    const { out, writes } = sink()
    const line = new ProgressLine(out, { tty: true, now: () => Date.now() })
    line.update(at('download', 256))
    line.update(at('download', 512))
    line.update(at('commit', 600))
    line.done()
    line.done()
    line.update(at('commit', 601))
    mock.timers.tick(1000)
    assert.deepEqual(writes, [
      `\r\x1b[K${formatProgress(at('download', 256), 0)}`,
      `\r\x1b[K${formatProgress(at('commit', 600), 0)}\n`
    ])
  })

  it('done() without any report writes nothing', () => {
    const { out, writes } = sink()
    const line = new ProgressLine(out, { tty: true, now: () => Date.now() })
    line.done()
    assert.deepEqual(writes, [])
  })

  it('formats phase, blocks, bytes and rate', () => {
    assert.equal(formatProgress({ did: DID, phase: 'walk', blocks: 1234, bytes: 2 * 1024 * 1024 }, 2), 'walk     1234 blocks  2.0 MiB  1.0 MiB/s')
  })

  it('shows blobs and blob bytes in the blob phase', () => {
    assert.equal(formatProgress({ did: DID, phase: 'blobs', blocks: 1234, bytes: 2 * 1024 * 1024, blobs: 3, blobBytes: 8 * 1024 * 1024 }, 2), 'blobs    3 blobs  8.0 MiB  4.0 MiB/s (1234 blocks, 2.0 MiB)')
  })
})
