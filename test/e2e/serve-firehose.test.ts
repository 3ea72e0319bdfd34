/**
 * subscribeRepos from the mirror, consumed by `@atproto/sync`'s Firehose client (which
 * checks commit signatures against the DID's key from the real PLC): a repo brought
 * current by a getRepo-based sync goes out as `#sync`, a commit the node followed
 * live as the `#commit` it verified (same ops, prevData), a deactivation as
 * `#account`; a cursor replays from the window.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { IdResolver } from '@atproto/identity'
import { Firehose, type Event } from '@atproto/sync'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { followerInit } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'

describe('subscribeRepos from the mirror (real PDS and PLC, @atproto/sync Firehose)', () => {
  let net: TestNetwork
  let dir: string
  let node: MirrorNode
  let alice: TestAccount
  const firehoses: Firehose[] = []

  /** A Firehose client on the mirror collecting events and errors. */
  function consume (cursor?: number): { events: Event[], errors: Error[] } {
    const out = { events: [] as Event[], errors: [] as Error[] }
    const firehose = new Firehose({
      service: node.http!.url.replace(/^http/, 'ws'),
      // a test against localhost: the plain fetch, not the SSRF-guarded default (which refuses http:)
      idResolver: new IdResolver({ plcUrl: net.plcUrl, fetch: globalThis.fetch }),
      getCursor: () => cursor,
      handleEvent: (evt) => { out.events.push(evt) },
      onError: (err) => { out.errors.push(err) }
    })
    firehoses.push(firehose)
    void firehose.start()
    return out
  }

  before(async () => {
    net = await startTestNetwork()
    dir = await mkdtemp(join(tmpdir(), 'atmirror-e2e-serve-firehose-'))
    alice = await net.createAccount('alice')
    await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'first', createdAt: new Date().toISOString() } }])
    node = await createMirrorNode(followerInit(dir, net.plcUrl, { http: { port: 0 } }))
    await node.start()
  })

  after(async () => {
    for (const firehose of firehoses) await firehose.destroy()
    await node?.stop()
    await net?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  it('a getRepo-based sync goes out as #sync, a followed commit as the #commit it verified, a deactivation as #account', async () => {
    const live = consume()
    await until('the subscription open', () => node.http!.subscribers === 1)
    await node.pin(alice.did)
    const head = await net.getLatestCommit(alice.did)
    await until('#sync of the first mirror', () => live.events.some(e => e.event === 'sync' && e.did === alice.did && e.rev === head.rev), { timeout: 60_000 })

    await until('the PDS stream connected', () => node.status().then(s => s.subscriptions?.[0]?.state === 'connected'), { timeout: 60_000 })
    const written = await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: '3kaaaaaaaaaa2', value: { text: 'live', createdAt: new Date().toISOString() } }])
    await until('#commit of the live record', () => live.events.some(e => e.event === 'create' && e.did === alice.did && e.rkey === '3kaaaaaaaaaa2'), { timeout: 60_000 })
      .catch((err: Error) => { throw new Error(`${err.message}; events ${JSON.stringify(live.events.map(e => e.event))}, errors ${live.errors.map(e => String(e) + ' ' + String((e as { cause?: unknown }).cause)).join('; ')}`) })
    const create = live.events.find(e => e.event === 'create' && e.rkey === '3kaaaaaaaaaa2') as Extract<Event, { event: 'create' }>
    assert.equal(create.cid.toString(), written.records[0].cid)
    assert.equal(create.commit.toString(), written.commit.cid)
    assert.equal(create.rev, written.commit.rev)
    assert.deepEqual(create.record, { $type: 'app.bsky.feed.post', text: 'live', createdAt: (create.record as { createdAt: string }).createdAt })

    await net.deactivateAccount(alice)
    await node.sync(alice.did).catch(() => {})
    await until('#account deactivated', () => live.events.some(e => e.event === 'account' && e.did === alice.did && !e.active), { timeout: 60_000 })
    assert.deepEqual(live.errors, [])

    // a cursor before everything replays the window, in order
    const replay = consume(0)
    await until('the replay', () => replay.events.some(e => e.event === 'account'), { timeout: 60_000 })
    const kinds = replay.events.map(e => e.event).filter(k => k !== 'identity')
    assert.deepEqual(kinds.slice(0, 3), ['sync', 'create', 'account'].slice(0, kinds.length >= 3 ? 3 : kinds.length))
    const seqs = replay.events.map(e => e.seq)
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))
    assert.deepEqual(replay.errors, [])
  })
})
