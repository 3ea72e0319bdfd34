/**
 * The concurrency tools (src/blocks/parallel.ts): pools with at most `concurrency`
 * calls in flight, a lazily read source, calls going on while the consumer is busy
 * but no more than `concurrency` results waiting for it, the first failure stopping
 * intake and thrown only once the calls in flight have settled; the alarm that can
 * be moved or dropped.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { setImmediate as turn } from 'node:timers/promises'
import { Alarm, eachParallel, parallel } from '../../src/blocks/parallel.ts'
import { until } from '../helpers/until.ts'

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

describe('parallel, with a busy consumer', () => {
  it('keeps calls going while the consumer is busy, until `concurrency` results wait for it', async () => {
    const t = tracker()
    let read = 0
    const source = function * (): Generator<number> {
      for (let n = 0; n < 40; n++) {
        read++
        yield n * 3 // n * 3 % 3 === 0: every call ends after one turn, none throws
      }
    }
    const out: number[] = []
    for await (const r of parallel(source(), t.fn, 3)) {
      if (out.length === 0) {
        // the consumer is away with its first result: the pool goes on without it...
        await until('calls started while the consumer is busy', () => t.started.length > 3, { interval: 1 })
        // ...until every slot holds a result nobody has taken yet
        for (let i = 0; i < 50; i++) await turn()
        assert.ok(t.started.length <= 6, `at most 3 results handed over and 3 waiting (started ${t.started.length})`)
        assert.ok(read <= 7, `the source is read only as slots free up (read ${read})`)
      }
      out.push(r)
    }
    assert.equal(out.length, 40)
    assert.equal(t.peak(), 3)
  })

  it('a consumer that stops early stops intake and waits for the calls in flight', async () => {
    const t = tracker()
    let read = 0
    const source = function * (): Generator<number> {
      for (let n = 0; n < 1000; n++) {
        read++
        yield n * 3 + 1
      }
    }
    for await (const r of parallel(source(), t.fn, 4)) {
      assert.ok(r > 0)
      break
    }
    assert.deepEqual([...t.started].sort(), [...t.settled].sort(), 'nothing left running')
    assert.ok(read < 20, `intake stopped (read ${read})`)
  })
})

describe('Alarm', () => {
  it('calls once when due, and says when', async () => {
    let calls = 0
    const alarm = new Alarm(() => { calls++ })
    assert.equal(alarm.due, undefined)
    const before = Date.now()
    alarm.set(30)
    assert.ok((alarm.due ?? 0) >= before + 30)
    await until('the alarm', () => calls === 1, { interval: 5 })
    assert.equal(alarm.due, undefined)
    for (let i = 0; i < 5; i++) await turn()
    assert.equal(calls, 1)
  })

  it('set again moves the pending call; clear drops it', async () => {
    const fired: string[] = []
    const moved = new Alarm(() => { fired.push('moved') })
    const dropped = new Alarm(() => { fired.push('dropped') })
    const last = new Alarm(() => { fired.push('last') })
    moved.set(10_000)
    moved.set(20)
    dropped.set(10)
    dropped.clear()
    assert.equal(dropped.due, undefined)
    last.set(60)
    await until('the last alarm', () => fired.includes('last'), { interval: 5 })
    assert.deepEqual(fired, ['moved', 'last'])
  })
})
