/**
 * The mirror's event sequence on its own: seqs grow, the replay window is bounded,
 * and each kind of cursor gets what the subscribeRepos lexicon says.
 */
import assert from 'node:assert/strict'
import { describe, it } from 'node:test'
import { ErrorFrame } from '@atproto/xrpc-server'
import { RepoEventLog, type RepoEvent } from '../../src/server/repo-events.ts'

/** The first `n` items a subscription yields (live ones included). */
async function take (log: RepoEventLog, cursor: number | undefined, n: number, during?: () => void): Promise<unknown[]> {
  const controller = new AbortController()
  const out: unknown[] = []
  const sub = log.subscribe(cursor, controller.signal)
  setImmediate(() => during?.())
  for await (const item of sub) {
    out.push(item)
    if (out.length >= n || item instanceof ErrorFrame) break
  }
  controller.abort()
  return out
}

describe('RepoEventLog', () => {
  it('hands out growing seqs, from the microsecond clock', () => {
    const before = Date.now() * 1000
    const log = new RepoEventLog()
    const a = log.append('identity', { did: 'did:plc:a', time: '' })
    const b = log.append('identity', { did: 'did:plc:b', time: '' })
    assert.ok(a.seq > before)
    assert.equal(b.seq, a.seq + 1)
    assert.equal(a.$type, 'com.atproto.sync.subscribeRepos#identity')
  })

  it('replays the events after a cursor inside the window, then goes live', async () => {
    const log = new RepoEventLog({ windowSize: 10 })
    const events = [1, 2, 3].map(i => log.append('identity', { did: `did:plc:${i}`, time: '' }))
    const got = await take(log, events[0].seq, 3, () => { log.append('identity', { did: 'did:plc:live', time: '' }) }) as RepoEvent[]
    assert.deepEqual(got.map(e => e.did), ['did:plc:2', 'did:plc:3', 'did:plc:live'])
  })

  it('keeps only the window: an older cursor gets #info OutdatedCursor, then the window', async () => {
    const log = new RepoEventLog({ windowSize: 3 })
    const first = log.append('identity', { did: 'did:plc:0', time: '' })
    for (let i = 1; i < 6; i++) log.append('identity', { did: `did:plc:${i}`, time: '' })
    const got = await take(log, first.seq, 4) as Array<Record<string, unknown>>
    assert.equal(got[0].$type, 'com.atproto.sync.subscribeRepos#info')
    assert.equal(got[0].name, 'OutdatedCursor')
    assert.deepEqual(got.slice(1).map(e => e.did), ['did:plc:3', 'did:plc:4', 'did:plc:5'])
  })

  it('refuses a cursor past the last seq with FutureCursor', async () => {
    const log = new RepoEventLog()
    log.append('identity', { did: 'did:plc:a', time: '' })
    const [frame] = await take(log, log.seq + 100, 1)
    assert.ok(frame instanceof ErrorFrame)
    assert.equal(frame.code, 'FutureCursor')
  })

  it('closes a subscriber that falls more than the window behind with ConsumerTooSlow', async () => {
    const log = new RepoEventLog({ windowSize: 5 })
    const controller = new AbortController()
    const sub = log.subscribe(undefined, controller.signal)
    const pending = sub.next()
    log.append('identity', { did: 'did:plc:0', time: '' })
    assert.equal(((await pending).value as RepoEvent).did, 'did:plc:0')
    // it stops reading while 20 more arrive
    for (let i = 1; i <= 20; i++) log.append('identity', { did: `did:plc:${i}`, time: '' })
    const next = await sub.next()
    assert.ok(next.value instanceof ErrorFrame)
    assert.equal(next.value.code, 'ConsumerTooSlow')
    controller.abort()
  })
})
