/**
 * The per-DID runner and the re-check scheduler, with jobs whose progress the test
 * controls (deferred promises): one job per DID, the global limit, priorities,
 * aborting a DID's jobs, stopping; the scheduler's ticks not waiting for a slow repo.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { setImmediate as turn } from 'node:timers/promises'
import { DidRunner } from '../../src/mirror/runner.ts'
import { PRIORITY, RepoScheduler } from '../../src/mirror/scheduler.ts'
import { until } from '../helpers/until.ts'

interface Deferred { promise: Promise<void>, resolve: () => void }
function deferred (): Deferred {
  let resolve!: () => void
  const promise = new Promise<void>(r => { resolve = r })
  return { promise, resolve }
}

/** Lets pending promise callbacks and queue hand-offs run. */
async function settle (): Promise<void> {
  for (let i = 0; i < 5; i++) await turn()
}

/** A job that records when it starts and ends, and ends when the test says so (or when aborted). */
function job (log: string[], name: string, gate: Deferred = deferred()): { fn: (signal: AbortSignal) => Promise<string>, gate: Deferred, signal: () => AbortSignal | undefined } {
  let seen: AbortSignal | undefined
  return {
    gate,
    signal: () => seen,
    fn: async (signal) => {
      seen = signal
      log.push(`start ${name}`)
      await Promise.race([gate.promise, new Promise<void>((resolve, reject) => {
        signal.addEventListener('abort', () => { reject(signal.reason) }, { once: true })
      })]).finally(() => { log.push(`end ${name}`) })
      return name
    }
  }
}

describe('DidRunner', () => {
  it('runs one job at a time per DID, in order', async () => {
    const runner = new DidRunner({ concurrency: 4 })
    const log: string[] = []
    const a = job(log, 'a1')
    const b = job(log, 'a2')
    const first = runner.run('did:a', a.fn)
    const second = runner.run('did:a', b.fn)
    await settle()
    assert.deepEqual(log, ['start a1'], 'the second job of the DID waits')
    assert.equal(runner.running('did:a'), true)
    a.gate.resolve()
    assert.equal(await first, 'a1')
    await settle()
    assert.deepEqual(log, ['start a1', 'end a1', 'start a2'])
    b.gate.resolve()
    assert.equal(await second, 'a2')
    assert.equal(runner.busy('did:a'), false, 'a DID with no job left is forgotten')
  })

  it('runs at most `concurrency` jobs at once over all DIDs', async () => {
    const runner = new DidRunner({ concurrency: 2 })
    const log: string[] = []
    const jobs = ['a', 'b', 'c'].map(name => job(log, name))
    const runs = jobs.map(async (j, i) => await runner.run(`did:${i}`, j.fn))
    await settle()
    assert.deepEqual(log, ['start a', 'start b'])
    assert.equal(runner.busy('did:2'), true, 'a job waiting for a slot counts as busy')
    assert.equal(runner.running('did:2'), false)
    jobs[1]?.gate.resolve()
    await settle()
    assert.deepEqual(log, ['start a', 'start b', 'end b', 'start c'])
    jobs[0]?.gate.resolve()
    jobs[2]?.gate.resolve()
    assert.deepEqual(await Promise.all(runs), ['a', 'b', 'c'])
  })

  it('gives a free slot to the highest priority first, then in arrival order', async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const log: string[] = []
    const blocker = job(log, 'blocker')
    const runs = [runner.run('did:0', blocker.fn)]
    await settle()
    const low1 = job(log, 'low1')
    const low2 = job(log, 'low2')
    const high = job(log, 'high')
    for (const j of [low1, low2, high]) j.gate.resolve()
    runs.push(runner.run('did:1', low1.fn, { priority: PRIORITY.retry }))
    runs.push(runner.run('did:2', low2.fn, { priority: PRIORITY.retry }))
    runs.push(runner.run('did:3', high.fn, { priority: PRIORITY.request }))
    blocker.gate.resolve()
    await Promise.all(runs)
    assert.deepEqual(log.filter(l => l.startsWith('start')), ['start blocker', 'start high', 'start low1', 'start low2'])
  })

  it('a job without a slot waits only for its DID', async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const log: string[] = []
    const busy = job(log, 'busy')
    const mine = job(log, 'mine')
    const free = job(log, 'free')
    free.gate.resolve()
    const running = runner.run('did:a', busy.fn)
    const waiting = runner.run('did:b', mine.fn)
    await settle()
    // did:c needs no slot: it runs although the only slot is taken
    assert.equal(await runner.run('did:c', free.fn, { slot: false }), 'free')
    // did:a's next job, even without a slot, waits for did:a's running job
    const after = job(log, 'after')
    after.gate.resolve()
    const next = runner.run('did:a', after.fn, { slot: false })
    await settle()
    assert.equal(log.includes('start after'), false)
    busy.gate.resolve()
    mine.gate.resolve()
    assert.deepEqual(await Promise.all([running, waiting, next]), ['busy', 'mine', 'after'])
  })

  it('abort(did) aborts the running and the waiting jobs of that DID only', async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const log: string[] = []
    const running = job(log, 'running')
    const waiting = job(log, 'waiting')
    const other = job(log, 'other')
    const r1 = runner.run('did:a', running.fn)
    const r2 = runner.run('did:a', waiting.fn)
    const r3 = runner.run('did:b', other.fn)
    await settle()
    runner.abort('did:a', new DOMException('unpinned', 'AbortError'))
    await assert.rejects(r1, { name: 'AbortError', message: 'unpinned' })
    await assert.rejects(r2, { name: 'AbortError' })
    assert.equal(running.signal()?.aborted, true)
    assert.equal(log.includes('start waiting'), false, 'an aborted waiting job never runs')
    // the slot did:a held goes to did:b
    await until('did:b to start', () => log.includes('start other'))
    assert.equal(other.signal()?.aborted, false)
    other.gate.resolve()
    assert.equal(await r3, 'other')
    // the DID takes new jobs afterwards
    const again = job(log, 'again')
    again.gate.resolve()
    assert.equal(await runner.run('did:a', again.fn), 'again')
  })

  it("a job's promise settles only once its function has, even when aborted", async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const unwound = deferred()
    let finished = false
    const controller = new AbortController()
    const run = runner.run('did:a', async (signal) => {
      await new Promise<void>(resolve => { signal.addEventListener('abort', () => { resolve() }, { once: true }) })
      await unwound.promise // slow to unwind
      finished = true
      signal.throwIfAborted()
    }, { signal: controller.signal })
    let settled = false
    run.catch(() => {}).finally(() => { settled = true })
    await settle()
    controller.abort(new DOMException('caller gave up', 'AbortError'))
    await settle()
    assert.equal(settled, false, 'still unwinding')
    assert.equal(runner.busy('did:a'), true)
    unwound.resolve()
    await assert.rejects(run, { name: 'AbortError' })
    assert.equal(finished, true)
    assert.equal(runner.busy('did:a'), false)
  })

  it('stop() aborts every job and waits for them', async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const log: string[] = []
    const a = job(log, 'a')
    const b = job(log, 'b')
    const runs = [runner.run('did:a', a.fn), runner.run('did:b', b.fn)].map(async p => await p.catch((err: Error) => err.name))
    await settle()
    await runner.stop()
    assert.deepEqual(log, ['start a', 'end a'])
    assert.deepEqual(await Promise.all(runs), ['AbortError', 'AbortError'])
  })
})

describe('RepoScheduler', () => {
  it('checkAll checks every pinned repo that has no job, through the runner', async () => {
    const runner = new DidRunner({ concurrency: 2 })
    const checked: string[] = []
    const scheduler = new RepoScheduler({
      pins: { list: async () => ['did:a', 'did:b', 'did:c'] },
      runner,
      check: async (did) => { checked.push(did) }
    }, { intervalMs: 0, checkOnStart: false })
    // did:b has a sync someone asked for: the pass leaves it to that sync
    const gate = deferred()
    const requested = runner.run('did:b', async () => { await gate.promise })
    await scheduler.checkAll()
    assert.deepEqual(checked.sort(), ['did:a', 'did:c'])
    gate.resolve()
    await requested
  })

  it('a tick gives the repos it skips (followed) the light job instead of a check, and a failing light job is only logged', async () => {
    const runner = new DidRunner({ concurrency: 4 })
    const checked: string[] = []
    const light: string[] = []
    const scheduler = new RepoScheduler({
      pins: { list: async () => ['did:polled', 'did:followed', 'did:broken'] },
      runner,
      check: async (did) => { checked.push(did) },
      skip: (did) => did !== 'did:polled',
      light: async (did) => {
        light.push(did)
        if (did === 'did:broken') throw new Error('the light job failed')
      }
    }, { intervalMs: 10, checkOnStart: true })
    scheduler.start()
    await until('two light jobs of each skipped repo', () => light.filter(d => d === 'did:followed').length >= 2 && light.filter(d => d === 'did:broken').length >= 2)
    await scheduler.stop()
    assert.ok(checked.length >= 2 && checked.every(did => did === 'did:polled'), `checked: ${checked.join(' ')}`)
    assert.ok(!light.includes('did:polled'))
  })

  it("a repo whose check hangs does not hold back the others' next ticks", async () => {
    const runner = new DidRunner({ concurrency: 4 })
    const counts = new Map<string, number>()
    const slow = deferred()
    let slowSignal: AbortSignal | undefined
    const scheduler = new RepoScheduler({
      pins: { list: async () => ['did:slow', 'did:ok'] },
      runner,
      check: async (did, { signal }) => {
        counts.set(did, (counts.get(did) ?? 0) + 1)
        if (did === 'did:slow') {
          slowSignal = signal
          await Promise.race([slow.promise, new Promise((resolve, reject) => { signal.addEventListener('abort', () => { reject(signal.reason) }) })])
        }
      }
    }, { intervalMs: 10, checkOnStart: true })
    scheduler.start()
    await until('three checks of did:ok', () => (counts.get('did:ok') ?? 0) >= 3)
    assert.equal(counts.get('did:slow'), 1, 'the hanging repo is not checked again while its check runs')
    await scheduler.stop()
    assert.equal(slowSignal?.aborted, true, 'stop aborts the running check')
  })

  it('re-checks of repos that failed last time wait behind the others for a slot', async () => {
    const runner = new DidRunner({ concurrency: 1 })
    const order: string[] = []
    let fail = true
    const scheduler = new RepoScheduler({
      pins: { list: async () => ['did:bad', 'did:good'] },
      runner,
      check: async (did) => {
        order.push(did)
        if (did === 'did:bad' && fail) throw new Error('slow host')
      }
    }, { intervalMs: 0, checkOnStart: false })
    await scheduler.checkAll()
    assert.deepEqual(order, ['did:bad', 'did:good'], 'pin order at first')
    order.length = 0
    await scheduler.checkAll()
    assert.deepEqual(order, ['did:good', 'did:bad'], 'the failing repo goes last')
    fail = false
    order.length = 0
    await scheduler.checkAll() // did:bad succeeds now
    order.length = 0
    await scheduler.checkAll()
    assert.deepEqual(order, ['did:bad', 'did:good'], 'back in line once it succeeds')
  })
})
