/**
 * RepoSyncer against the fake PDS (test/mirror/fake-pds.ts, which is also the DID
 * directory): which requests a sync makes, and which identity it makes them with.
 * The same cases against the real PLC and PDS, through a running node, are in
 * test/e2e/identity-sync.test.ts.
 */
import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, afterEach, before, beforeEach, describe, it } from 'node:test'
import { RepoTakendownError } from '../../src/errors.ts'
import type { HeadResolver } from '../../src/head/head-resolver.ts'
import { PdsHeadResolver } from '../../src/head/pds-head-resolver.ts'
import { AtprotoIdentityResolver } from '../../src/identity/resolver.ts'
import { MirrorStore } from '../../src/mirror/store.ts'
import { RepoSyncer } from '../../src/mirror/sync.ts'
import { CID } from '../../src/repo/cid.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { startFakePds, type FakePds, type Route } from '../helpers/fake-pds.ts'
import { storedBlocks } from '../helpers/blocks.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

describe('RepoSyncer against a fake PDS', () => {
  let pds: FakePds
  let other: FakePds
  let root: string
  let store: MirrorStore
  let identity: AtprotoIdentityResolver
  let syncer: RepoSyncer
  let repo: EvolvingRepo
  let v1: RepoVersion
  let seed = 40

  const routes = (server: FakePds): Array<Route | 'other'> => server.requests.map(r => r.route)
  const count = (server: FakePds, route: Route): number => routes(server).filter(r => r === route).length
  const deactivated = (_req: unknown, res: { writeHead: (status: number, headers: Record<string, string>) => void, end: (body: string) => void }): void => {
    res.writeHead(400, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ error: 'RepoDeactivated', message: 'Repo has been deactivated' }))
  }

  before(async () => {
    pds = await startFakePds()
    other = await startFakePds()
    root = await mkdtemp(join(tmpdir(), 'atmirror-sync-'))
  })

  beforeEach(async () => {
    pds.reset()
    other.reset()
    store = await MirrorStore.open(join(root, `data-${seed}`))
    // the fake PDS is the directory too; its documents stay cached for the default window
    identity = new AtprotoIdentityResolver({ plcUrl: pds.url, allowHttpLocalhost: true })
    syncer = new RepoSyncer({ store, identity, heads: new PdsHeadResolver({ identity }) })
    repo = await EvolvingRepo.create(seed++, posts(40))
    v1 = await repo.version()
    pds.setRepo(v1.did, repo.keypair, v1)
  })

  afterEach(async () => {
    await store.close()
  })

  after(async () => {
    await pds.stop()
    await other.stop()
    await rm(root, { recursive: true, force: true })
  })

  it('a first sync is one getRepo; an unchanged one asks for the head only; a changed one getRepo since the stored rev', async () => {
    const first = await syncer.sync(v1.did)
    assert.deepEqual({ changed: first.changed, full: first.full, rev: first.rev, records: first.records }, { changed: true, full: true, rev: v1.rev, records: 40 })
    assert.deepEqual(routes(pds), ['did', 'getLatestCommit', 'getBlocks', 'getRepo'])
    assert.equal(pds.requests.at(-1)?.url, `/xrpc/com.atproto.sync.getRepo?did=${encodeURIComponent(v1.did)}`)
    const state = await store.getState(v1.did)
    assert.deepEqual({ commit: state?.commit, pds: state?.pds, status: state?.status }, { commit: v1.commit.toString(), pds: pds.url, status: 'active' })

    pds.reset()
    const unchanged = await syncer.sync(v1.did)
    assert.equal(unchanged.changed, false)
    assert.deepEqual(unchanged.fetched, { local: 0, bitswap: 0, pds: 0 })
    assert.deepEqual(routes(pds), ['getLatestCommit', 'getBlocks'])

    const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'one more') }])
    pds.setRepo(v2.did, repo.keypair, v2)
    pds.reset()
    const next = await syncer.sync(v1.did)
    assert.deepEqual({ changed: next.changed, full: next.full, rev: next.rev, records: next.records }, { changed: true, full: false, rev: v2.rev, records: 41 })
    assert.equal(pds.requests.at(-1)?.url, `/xrpc/com.atproto.sync.getRepo?did=${encodeURIComponent(v1.did)}&since=${v1.rev}`)
  })

  it('after the signing key rotates, the next sync succeeds at the first attempt and keeps its download', async () => {
    await syncer.sync(v1.did)
    const oldKey = (await identity.resolve(v1.did)).didKey
    await repo.rotateKey(999)
    const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'signed by the new key') }])
    pds.setRepo(v2.did, repo.keypair, v2)
    // the directory names the new key; the resolver still holds the old one
    assert.equal((await identity.resolve(v1.did)).didKey, oldKey)
    pds.reset()

    const result = await syncer.sync(v1.did)
    assert.deepEqual({ changed: result.changed, rev: result.rev }, { changed: true, rev: v2.rev })
    // the head failed under the old key, the document was fetched once, and the one download was kept
    assert.deepEqual(routes(pds), ['getLatestCommit', 'getBlocks', 'did', 'getLatestCommit', 'getBlocks', 'getRepo'])
    assert.equal(count(pds, 'getRepo'), 1)
    const state = await store.getState(v1.did)
    assert.equal(state?.commit, v2.commit.toString())
    assert.equal((await identity.resolve(v1.did)).didKey, repo.keypair.did())
    const verified = await verifyRepo(store.blocks, CID.parse(state?.commit as string), { did: v1.did, key: repo.key })
    assert.equal(verified.records, 41)
  })

  it('after the account moves, the next sync asks only the new host; the old one gets no getRepo or getBlocks', async () => {
    await syncer.sync(v1.did)
    const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'written on the new host') }])
    other.setRepo(v2.did, repo.keypair, v1)
    other.setRepo(v2.did, repo.keypair, v2)
    pds.setPdsEndpoint(v1.did, other.url)
    pds.reset()
    for (const route of ['getLatestCommit', 'getBlocks', 'getRepo'] as const) pds.handle(route, deactivated)

    const result = await syncer.sync(v1.did)
    assert.deepEqual({ changed: result.changed, full: result.full, rev: result.rev }, { changed: true, full: false, rev: v2.rev })
    assert.deepEqual(routes(pds), ['getLatestCommit', 'did'])
    assert.deepEqual(routes(other), ['getLatestCommit', 'getBlocks', 'getRepo'])
    const state = await store.getState(v1.did)
    assert.deepEqual({ commit: state?.commit, pds: state?.pds, status: state?.status }, { commit: v2.commit.toString(), pds: other.url, status: 'active' })
  })

  it('a takedown said by the host the account left sets no status and keeps the blocks', async () => {
    await syncer.sync(v1.did)
    const blocks = await storedBlocks(store)
    pds.setPdsEndpoint(v1.did, other.url) // the new host does not answer for it yet: 400 RepoNotFound
    other.handle('getLatestCommit', (_req, res) => { res.writeHead(503); res.end() })
    pds.handle('getLatestCommit', (_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: 'RepoTakendown', message: 'Repo has been takendown' }))
    })
    await assert.rejects(syncer.sync(v1.did), { name: 'PdsUnavailableError' })
    const state = await store.getState(v1.did)
    assert.deepEqual({ status: state?.status, commit: state?.commit, pds: state?.pds }, { status: 'active', commit: v1.commit.toString(), pds: pds.url })
    assert.deepEqual(await storedBlocks(store), blocks)
  })

  it('a status error naming a host other than the current PDS is not recorded; from the current PDS it is', async () => {
    await syncer.sync(v1.did)
    const blocks = await storedBlocks(store)
    const takedown = (url: string): HeadResolver => ({
      name: 'pds',
      resolveHead: async () => { throw new RepoTakendownError('com.atproto.sync.getLatestCommit: RepoTakendown', { did: v1.did, url: `${url}/xrpc/com.atproto.sync.getLatestCommit`, status: 400 }) }
    })
    const elsewhere = new RepoSyncer({ store, identity, heads: takedown('http://localhost:9') })
    await assert.rejects(elsewhere.sync(v1.did), { name: 'RepoTakendownError' })
    assert.equal((await store.getState(v1.did))?.status, 'active')
    assert.deepEqual(await storedBlocks(store), blocks)

    const here = new RepoSyncer({ store, identity, heads: takedown(pds.url) })
    await assert.rejects(here.sync(v1.did), { name: 'RepoTakendownError' })
    assert.equal((await store.getState(v1.did))?.status, 'takendown')
    assert.deepEqual(await storedBlocks(store), [])
  })
})
