/**
 * One identity per sync, on a running node against the real PLC and PDS: after the
 * repo's signing key rotates, and after the account moves to another PDS, the
 * node's next sync (its cached DID document still naming the old key or host) works
 * at the first attempt with the identity the head was verified against.
 */
import assert from 'node:assert/strict'
import { readFile, writeFile, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { createMirrorNode, type MirrorNode } from '../../src/node.ts'
import { CID } from '../../src/repo/cid.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { startTestNetwork, type TestNetwork, type TestRecord } from '../../support/network.ts'

function posts (n: number, tag: string): TestRecord[] {
  return Array.from({ length: n }, (_, i) => ({
    collection: 'app.bsky.feed.post',
    value: { text: `${tag} ${i}`, createdAt: new Date(Date.UTC(2024, 0, 1, 0, 0, i)).toISOString() }
  }))
}

/** How many requests in `log` (from `from` on) were for `nsid`. */
function count (log: string[], nsid: string, from = 0): number {
  return log.slice(from).filter(path => path.startsWith(`/xrpc/${nsid}?`)).length
}

describe('one identity per sync, on a running node (real PLC and PDS)', () => {
  let net: TestNetwork
  let root: string
  let node: MirrorNode
  const errors: Array<{ did: string, error: Error }> = []

  before(async () => {
    net = await startTestNetwork()
    root = await mkdtemp(join(tmpdir(), 'atmirror-e2e-identity-'))
    node = await createMirrorNode({
      dataDir: join(root, 'node'),
      plcUrl: net.plcUrl,
      allowHttpLocalhost: true,
      network: false,
      api: false,
      checkOnStart: false,
      intervalMs: 0
    })
    node.events.addEventListener('repo:error', (evt) => { errors.push(evt.detail) })
    await node.start()
  })

  after(async () => {
    await node?.stop()
    await net?.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('after the signing key rotates, the next sync succeeds at the first attempt and keeps its one download', async () => {
    const account = await net.createAccount('rotate')
    await net.writeRecords(account, posts(20, 'before'))
    await node.pin(account.did)
    const oldKey = (await node.identity.resolve(account.did)).didKey

    const rotated = await net.rotateSigningKey(account)
    const written = await net.writeRecords(account, posts(3, 'after'))
    // the node has not seen the rotation: its cached document names the old key
    assert.equal((await node.identity.resolve(account.did)).didKey, oldKey)
    const mark = net.pdsRequests.length
    errors.length = 0

    const result = await node.sync(account.did)
    assert.deepEqual({ changed: result.changed, rev: result.rev, records: result.records }, { changed: true, rev: written.commit.rev, records: 23 })
    assert.deepEqual(errors, [])
    assert.equal(count(net.pdsRequests, 'com.atproto.sync.getRepo', mark), 1, 'one download, kept')
    const state = await node.store.getState(account.did)
    assert.deepEqual({ commit: state?.commit, status: state?.status }, { commit: written.commit.cid, status: 'active' })
    assert.equal((await node.identity.resolve(account.did)).didKey, rotated.didKey)
    const verified = await verifyRepo(node.store.blocks, CID.parse(written.commit.cid), { did: account.did, key: parseDidKey(rotated.didKey) })
    assert.equal(verified.records, 23)
  })

  it('once it has seen a rotation, the node refuses a commit signed by the rotated-out key', async () => {
    const account = await net.createAccount('revoked')
    await net.writeRecords(account, posts(5, 'before'))
    await node.pin(account.did)
    const { keyLocation } = await net.pds!.ctx.actorStore.getLocation(account.did)
    const oldKeyFile = await readFile(keyLocation)

    await net.rotateSigningKey(account)
    await node.sync(account.did)
    const before = await node.store.getState(account.did)
    // whoever holds the old key (here: the PDS, given it back) signs a new commit
    await writeFile(keyLocation, oldKeyFile)
    await net.writeRecords(account, posts(1, 'forged'))

    await assert.rejects(node.sync(account.did), { name: 'CommitSignatureError' })
    assert.deepEqual(await node.store.getState(account.did), before)
  })

  it('after the account moves to another PDS, the next sync asks only the new host', async () => {
    const account = await net.createAccount('move')
    await net.writeRecords(account, posts(20, 'old host'))
    await node.pin(account.did)
    const second = await net.addPds()
    await net.migrateAccount(account, second)
    const written = await net.writeRecords(account, posts(3, 'new host'))
    // the node has not seen the move: its cached document names the old host
    assert.equal((await node.identity.resolve(account.did)).pds, net.pdsUrl)
    const mark = net.pdsRequests.length
    errors.length = 0

    const result = await node.sync(account.did)
    assert.deepEqual({ changed: result.changed, rev: result.rev, records: result.records }, { changed: true, rev: written.commit.rev, records: 23 })
    assert.deepEqual(errors, [])
    const old = net.pdsRequests.slice(mark)
    assert.equal(count(old, 'com.atproto.sync.getRepo'), 0, `the old host got no getRepo: ${old.join(' ')}`)
    assert.equal(count(old, 'com.atproto.sync.getBlocks'), 0, `the old host got no getBlocks: ${old.join(' ')}`)
    assert.equal(count(second.requests, 'com.atproto.sync.getRepo'), 1)
    const state = await node.store.getState(account.did)
    assert.deepEqual({ commit: state?.commit, pds: state?.pds, status: state?.status }, { commit: written.commit.cid, pds: second.url, status: 'active' })
  })
})
