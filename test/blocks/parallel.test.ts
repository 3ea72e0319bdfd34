/**
 * The bounded pools (src/blocks/parallel.ts): at most `concurrency` calls in flight,
 * a lazily read source, the first failure stopping intake and thrown only once
 * the calls in flight have settled.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { setImmediate as turn } from 'node:timers/promises'
import { eachParallel, parallel } from '../../src/blocks/parallel.ts'

/** A call that records how many run at once and ends after a few turns of the event loop. */
function tracker (): { fn: (n: number) => Promise<number>, peak: () => number, started: number[], settled: number[] } {
  let running = 0
  let peak = 0
  const started: number[] = []
  const settled: number[] = []
  return {
    started,
    settled,
    peak: () => peak,
    fn: async (n) => {
      started.push(n)
      running++
      peak = Math.max(peak, running)
      for (let i = 0; i < 1 + (n % 3); i++) await turn()
      running--
      settled.push(n)
      if (n === 13) throw new Error('thirteen')
      return n * 2
    }
  }
}

describe('eachParallel', () => {
  it('runs every item, never more than `concurrency` at once', async () => {
    const t = tracker()
    await eachParallel(Array.from({ length: 12 }, (_, i) => i), async (n) => { await t.fn(n) }, 4)
    assert.deepEqual([...t.settled].sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i))
    assert.equal(t.peak(), 4)
  })

  it('stops taking items at the first failure and throws it once the calls in flight have settled', async () => {
    const t = tracker()
    let read = 0
    const source = function * (): Generator<number> {
      for (let n = 10; n < 100; n++) {
        read++
        yield n
      }
    }
    await assert.rejects(eachParallel(source(), async (n) => { await t.fn(n) }, 3), { message: 'thirteen' })
    assert.deepEqual([...t.started].sort(), [...t.settled].sort(), 'nothing left running')
    assert.ok(read < 20, `the source was read lazily and intake stopped (read ${read})`)
  })

  it('a failing source is thrown after the calls in flight have settled', async () => {
    const t = tracker()
    const source = async function * (): AsyncGenerator<number> {
      yield 1
      yield 2
      throw new Error('source broke')
    }
    await assert.rejects(eachParallel(source(), async (n) => { await t.fn(n) }, 4), { message: 'source broke' })
    assert.deepEqual([...t.started].sort(), [...t.settled].sort())
  })
})

describe('parallel', () => {
  it('yields every result, never more than `concurrency` calls at once', async () => {
    const t = tracker()
    const out: number[] = []
    for await (const r of parallel(Array.from({ length: 12 }, (_, i) => i), t.fn, 3)) out.push(r)
    assert.deepEqual(out.sort((a, b) => a - b), Array.from({ length: 12 }, (_, i) => i * 2))
    assert.equal(t.peak(), 3)
  })

  it('throws the first failure once the calls in flight have settled', async () => {
    const t = tracker()
    await assert.rejects(async () => { for await (const r of parallel(Array.from({ length: 30 }, (_, i) => i + 10), t.fn, 3)) assert.ok(r >= 20) }, { message: 'thirteen' })
    assert.deepEqual([...t.started].sort(), [...t.settled].sort())
  })
})
