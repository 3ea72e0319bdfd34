/**
 * Live following against a real PDS + PLC (support/network.ts): a node that polls
 * only at start (interval 0) follows the PDS's subscribeRepos. Creates, updates and
 * deletes reach it as `#commit` events and are applied without getRepo; a deleted
 * record's block is no longer stored or served over Bitswap; a takedown through the
 * PDS admin API releases the whole repo; the export equals the PDS's getRepo.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import type { FollowedEvent } from '../../src/mirror/follower.ts'
import { parseCid, type CID } from '../../src/repo/cid.ts'
import { startTestNetwork, type TestAccount, type TestNetwork } from '../../support/network.ts'
import { collect } from '../helpers/bytes.ts'
import { splitCar } from '../helpers/car-tools.ts'
import { followerInit } from '../helpers/nodes.ts'
import { until } from '../helpers/until.ts'

describe('following a real PDS', () => {
  let net: TestNetwork
  let dir: string
  let node: MirrorNode
  let alice: TestAccount
  const events: FollowedEvent[] = []

  before(async () => {
    net = await startTestNetwork()
    dir = await mkdtemp(join(tmpdir(), 'atmirror-e2e-follow-'))
    alice = await net.createAccount('alice')
    await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', value: { text: 'first', createdAt: new Date().toISOString() } }])
    node = await createMirrorNode(followerInit(dir, net.plcUrl, { network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'] } }))
    node.events.addEventListener('firehose:event', (evt) => { events.push(evt.detail) })
    await node.pin(alice.did)
    await node.start()
    await until('the PDS stream connected', () => node.status().then(s => s.subscriptions?.[0]?.state === 'connected'))
    // a first connection has no cursor to replay from, so every repo of the host is checked once
    await until('the first check done', () => node.status().then(s => s.repos.every(r => !r.syncing)))
  })

  after(async () => {
    await node?.stop()
    await net?.stop()
    await rm(dir, { recursive: true, force: true })
  })

  /** Waits until the stored rev is the PDS's, through an applied event. */
  async function caughtUp (rev: string): Promise<void> {
    await until(`rev ${rev} applied from the firehose`, () => events.some(e => e.did === alice.did && e.outcome === 'applied' && e.state?.rev === rev))
    assert.equal((await node.getState(alice.did)).rev, rev)
  }

  async function served (cid: CID): Promise<boolean> {
    const serving = node.network?.serving
    assert.ok(serving !== undefined)
    try {
      for await (const _ of serving.get(cid)) { /* drain */ }
      return true
    } catch (err) {
      assert.equal((err as Error).name, 'NotFoundError')
      return false
    }
  }

  async function assertExportEqualsPds (did: string): Promise<void> {
    const ours = splitCar(await collect(node.exportCar(did)))
    const theirs = splitCar(await net.getRepoCar(did))
    assert.equal(ours.roots[0].toString(), theirs.roots[0].toString())
    assert.deepEqual(ours.blocks.map(b => b.cid.toString()).sort(), theirs.blocks.map(b => b.cid.toString()).sort())
  }

  it('mirrors a created, updated and deleted record from #commit events, without getRepo', async () => {
    net.pdsRequests.length = 0
    const created = await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: 'followed', value: { text: 'hello', createdAt: new Date().toISOString() } }])
    await caughtUp(created.commit.rev)
    const record = parseCid(created.records[0].cid)
    assert.equal(await served(record), true)

    const updated = await net.updateRecord(alice, { collection: 'app.bsky.feed.post', rkey: 'followed', value: { text: 'hello again', createdAt: new Date().toISOString() } })
    await caughtUp(updated.commit.rev)
    const newer = parseCid(updated.cid)
    assert.equal(await served(newer), true)
    assert.equal(await served(record), false, 'the replaced record is no longer served')

    const deleted = await net.deleteRecord(alice, 'app.bsky.feed.post', 'followed')
    await caughtUp(deleted.commit.rev)
    assert.equal(node.store.blockstore.getBytesSync(newer), undefined, 'the deleted record is no longer stored')
    assert.equal(await served(newer), false, 'the deleted record is no longer served')
    assert.equal(net.pdsRequests.filter(path => path.includes('getRepo')).length, 0, 'no getRepo while following')
    await assertExportEqualsPds(alice.did)
    const status = await node.status()
    assert.equal(status.subscriptions?.[0].host, new URL(net.pdsUrl).origin)
    assert.ok((status.subscriptions?.[0].cursor ?? 0) > 0, 'the cursor was persisted')
    assert.ok(status.repos.find(r => r.did === alice.did)?.lastEventAt !== undefined)
  })

  it('applies a backlog of one repo\'s commits as one run: every event reported, one advance, the export equals the PDS', async () => {
    // the repo's writer is held, so the events arrive while the first one waits and queue behind it
    let release!: () => void
    const held = node.syncer.exclusive(alice.did, async () => { await new Promise<void>(resolve => { release = resolve }) })
    let advances = 0
    const commitRepo = node.store.commitRepo.bind(node.store)
    node.store.commitRepo = async (...args) => { advances++; return await commitRepo(...args) }
    try {
      const revs: string[] = []
      const doomed = await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: 'doomed', value: { text: 'short-lived', createdAt: new Date().toISOString() } }])
      revs.push(doomed.commit.rev)
      for (let i = 0; i < 4; i++) {
        revs.push((await net.writeRecords(alice, [{ collection: 'app.bsky.feed.post', rkey: `run${i}`, value: { text: `run ${i}`, createdAt: new Date().toISOString() } }])).commit.rev)
      }
      revs.push((await net.deleteRecord(alice, 'app.bsky.feed.post', 'doomed')).commit.rev)
      await until('the events received', () => node.status().then(s => (s.subscriptions?.[0]?.seq ?? 0) >= (s.subscriptions?.[0]?.cursor ?? 0) + revs.length))
      release()
      await held
      await caughtUp(revs[revs.length - 1])
      for (const rev of revs) assert.ok(events.some(e => e.outcome === 'applied' && e.rev === rev), `rev ${rev} reported applied`)
      // the first event (taken alone, before the hold) and then the other five together
      assert.equal(advances, 2)
      assert.equal(node.store.blockstore.getBytesSync(parseCid(doomed.records[0].cid)), undefined, 'a record created and deleted within the run is not stored')
      assert.equal(node.store.blockstore.getBytesSync(parseCid(doomed.commit.cid)), undefined, 'nor is a commit the run went past')
      await assertExportEqualsPds(alice.did)
    } finally {
      release?.()
      node.store.commitRepo = commitRepo
    }
  })

  it('stops serving the whole repo on a takedown through the admin API', async () => {
    const state = await node.getState(alice.did)
    const commit = parseCid(state.commit)
    assert.equal(await served(commit), true)
    await net.takedownAccount(alice.did)
    await until('the takedown recorded', async () => (await node.getState(alice.did)).status === 'takendown')
    assert.equal(await served(commit), false)
    await until('the blocks collected', () => node.store.blockstore.getBytesSync(commit) === undefined)
    await net.takedownAccount(alice.did, false)
  })
})
