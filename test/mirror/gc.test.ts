import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { HoldDelta, holdKeys, repoBlocksDelta, repoHoldDelta } from '../../src/mirror/gc.ts'
import { MirrorStore, type RepoState } from '../../src/mirror/store.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes } from '../../src/repo/cid.ts'
import { BLOCKSTORE_KINDS, hexOf, removeRawBlock, storedBlocks } from '../helpers/blocks.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'
import { hostileRepo } from '../helpers/hostile-mst.ts'

/** What the syncer does around an advance, without the network: stage + write, delta, one batch, GC. */
async function advance (store: MirrorStore, from: RepoVersion | undefined, to: RepoVersion, options: { collect?: boolean } = {}): Promise<{ candidates: number, holds: number }> {
  const release = await store.beginWrite()
  try {
    await store.putBlocks(to.did, to.blocks)
    const delta = from === undefined
      ? await repoBlocksDelta(store.blocks, to.commit)
      : await repoHoldDelta(store.blocks, from, to)
    const { candidates } = await store.commitRepo(stateOf(to), delta, { pin: true, fresh: from === undefined })
    return { candidates, holds: delta.size }
  } finally {
    // collect: false leaves the candidates for a later run, as a process killed here would
    if (options.collect !== false) await release()
  }
}

function stateOf (version: RepoVersion): RepoState {
  return { did: version.did, commit: version.commit.toString(), rev: version.rev, data: version.data.toString(), status: 'active', syncedAt: new Date().toISOString() }
}

const hexes = (version: RepoVersion): string[] => version.blocks.map(b => hexOf(b.cid)).sort()
const union = (...lists: string[][]): string[] => [...new Set(lists.flat())].sort()

for (const kind of BLOCKSTORE_KINDS) describe(`garbage collection (${kind} store)`, () => {
  let root: string
  let n = 0
  before(async () => { root = await mkdtemp(join(tmpdir(), 'atmirror-gc-')) })
  after(async () => { await rm(root, { recursive: true, force: true }) })
  const open = async (): Promise<{ dir: string, store: MirrorStore }> => {
    const dir = join(root, `store-${++n}`)
    return { dir, store: await MirrorStore.open(dir, { blockstore: kind }) }
  }

  it('an advance deletes what only the old repo used', async () => {
    const { store } = await open()
    try {
      const records = posts(40)
      const repo = await EvolvingRepo.create(1, records)
      const v1 = await repo.version()
      await advance(store, undefined, v1)
      assert.deepEqual(await storedBlocks(store), hexes(v1))
      const v2 = await repo.write([
        { action: 'update', value: post(records[3].rkey, 'edited') },
        { action: 'delete', collection: 'app.bsky.feed.post', rkey: records[17].rkey },
        { action: 'create', value: post('3zzzzzzzzzzzz', 'new') }
      ])
      await advance(store, v1, v2)
      // exactly the new repo: the old commit, the old and deleted records and the
      // replaced nodes are gone
      assert.deepEqual(await storedBlocks(store), hexes(v2))
    } finally {
      await store.close()
    }
  })

  it('a one-record change touches a handful of holds', async () => {
    const { store } = await open()
    try {
      const records = posts(300)
      const repo = await EvolvingRepo.create(2, records)
      const v1 = await repo.version()
      await advance(store, undefined, v1)
      const v2 = await repo.write([{ action: 'update', value: post(records[150].rkey, 'edited') }])
      const { holds, candidates } = await advance(store, v1, v2)
      // two commits, two record versions, and the old and new node on each level
      assert.ok(holds <= 4 + 2 * 6, `holds changed: ${holds}`)
      assert.ok(candidates <= 2 + 6, `candidates: ${candidates}`)
    } finally {
      await store.close()
    }
  })

  it('blocks shared between repos survive while any holder remains', async () => {
    const { store } = await open()
    try {
      // the same record (same bytes, same CID) in two repos
      const shared = post('3kaaaaaaaaaaa', 'the same post in two repos')
      const alice = await (await EvolvingRepo.create(3, [shared, ...posts(10, 'alice')])).version()
      const bob = await (await EvolvingRepo.create(4, [shared, ...posts(10, 'bob')])).version()
      const sharedHex = alice.blocks.map(b => hexOf(b.cid)).filter(h => hexes(bob).includes(h))
      assert.ok(sharedHex.length >= 1)
      await advance(store, undefined, alice)
      await advance(store, undefined, bob)
      assert.deepEqual(await storedBlocks(store), union(hexes(alice), hexes(bob)))

      await syncerlessUnpin(store, alice.did)
      assert.deepEqual(await storedBlocks(store), hexes(bob))
      await syncerlessUnpin(store, bob.did)
      assert.deepEqual(await storedBlocks(store), [])
      assert.deepEqual(await store.pins.list(), [])
    } finally {
      await store.close()
    }
  })

  it('a record under two keys stays until both are gone', async () => {
    const { store } = await open()
    try {
      const twin = { text: 'twin', createdAt: '2024-01-01T00:00:00.000Z', $type: 'app.bsky.feed.post' }
      const a = { collection: 'app.bsky.feed.post' as const, rkey: '3kaaaaaaaaaaa', record: twin }
      const b = { collection: 'app.bsky.feed.post' as const, rkey: '3kbbbbbbbbbbb', record: twin }
      const repo = await EvolvingRepo.create(5, [a, b, ...posts(5)])
      const v1 = await repo.version()
      await advance(store, undefined, v1)
      const twinHex = hexOf(cidForBytes(encodeCbor(twin)))
      assert.ok(hexes(v1).includes(twinHex))
      // @atproto/repo drops a record block on delete even when another key still
      // links it, so the later versions are built from scratch (same DID and key;
      // the MST is the same for the same records)
      const v2 = await (await EvolvingRepo.create(5, [b, ...posts(5)])).version()
      await advance(store, v1, v2)
      assert.ok((await storedBlocks(store)).includes(twinHex), 'still under the other key')
      assert.deepEqual(await storedBlocks(store), hexes(v2))
      const v3 = await (await EvolvingRepo.create(5, posts(5))).version()
      await advance(store, v2, v3)
      assert.ok(!(await storedBlocks(store)).includes(twinHex))
      assert.deepEqual(await storedBlocks(store), hexes(v3))
    } finally {
      await store.close()
    }
  })

  it('blocks of a failed sync are collected and the stored repo is untouched', async () => {
    const { store } = await open()
    try {
      const repo = await EvolvingRepo.create(6, posts(30))
      const v1 = await repo.version()
      await advance(store, undefined, v1)
      const state = await store.getState(v1.did)
      const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'never committed') }])
      const release = await store.beginWrite()
      // the attempt stores everything (including blocks v1 already holds), then fails
      await store.putBlocks(v2.did, v2.blocks)
      assert.deepEqual(await storedBlocks(store), union(hexes(v1), hexes(v2)))
      await store.discardStaged(v2.did)
      await release()
      assert.deepEqual(await storedBlocks(store), hexes(v1))
      assert.deepEqual(await store.getState(v1.did), state)
    } finally {
      await store.close()
    }
  })

  it('blocks a killed sync left behind are collected by the next advance', async () => {
    const { dir, store } = await open()
    const repo = await EvolvingRepo.create(7, posts(30))
    const v1 = await repo.version()
    await advance(store, undefined, v1)
    const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'stored, then the process died') }])
    await store.beginWrite()
    await store.putBlocks(v2.did, v2.blocks)
    // killed here: no discard, no commit, no collection
    await store.close()

    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await reopened.getState(v1.did), { ...stateOf(v1), syncedAt: (await reopened.getState(v1.did))?.syncedAt })
      const v3 = await repo.write([{ action: 'delete', collection: 'app.bsky.feed.post', rkey: '3zzzzzzzzzzzz' }, { action: 'create', value: post('3yyyyyyyyyyyy', 'what the PDS has now') }])
      await advance(reopened, v1, v3)
      assert.deepEqual(await storedBlocks(reopened), hexes(v3))
    } finally {
      await reopened.close()
    }
  })

  it('a killed first sync of a DID never run again: its staged blocks are collected when the store opens; a pinned repo keeps its own and its staged list waits for its next sync', async () => {
    const { dir, store } = await open()
    // a pinned repo at its current state, and a record it shares with the other DID
    const shared = post('3kaaaaaaaaaaa', 'in both repos')
    const pinned = await EvolvingRepo.create(10, [shared, ...posts(30, 'pinned')])
    const kept = await pinned.version()
    await advance(store, undefined, kept)
    // another DID's first sync stores everything, staged, and is killed before its
    // advance (no discard, no commit, no collection); it is not pinned
    const stray = await (await EvolvingRepo.create(11, [shared, ...posts(40, 'stray')])).version()
    await store.beginWrite()
    await store.putBlocks(stray.did, stray.blocks)
    // and a second staging list of the pinned DID: an incremental sync killed too
    const next = await pinned.write([{ action: 'create', value: post('3zzzzzzzzzzzz', 'never committed') }])
    await store.putBlocks(next.did, next.blocks)
    assert.deepEqual(await storedBlocks(store), union(hexes(kept), hexes(stray), hexes(next)))
    assert.equal(await store.pins.has(stray.did), false)
    const staged = await stagingKeys(store)
    assert.ok(staged.some(key => key.includes(`/${stray.did}/`)) && staged.some(key => key.includes(`/${kept.did}/`)), staged.join(', '))
    // what the kill leaves: the datastore closed uncleanly, blocks/.open still there
    await store.datastore.close()
    if (kind === 'fs') assert.ok(existsSync(join(dir, 'blocks', '.open')))

    const reopened = await MirrorStore.open(dir)
    try {
      // the stray DID's list and blocks are gone; the pinned DID's list stays
      const left = await stagingKeys(reopened)
      assert.ok(left.length > 0 && left.every(key => key.includes(`/${kept.did}/`)), left.join(', '))
      assert.deepEqual(await storedBlocks(reopened), union(hexes(kept), hexes(next)))
      assert.ok(hexes(kept).includes(hexOf(cidForBytes(encodeCbor(shared.record)))), 'the shared record stays: the pinned repo holds it')
      assert.equal(await reopened.holds.hasCandidates(), false)
      assert.equal((await reopened.getState(kept.did))?.commit, kept.commit.toString())
      assert.equal(await reopened.getState(stray.did), undefined)
      const summary = await verifyRepo(reopened.blocks, kept.commit, { did: kept.did, key: pinned.key })
      assert.equal(summary.blocks, kept.blocks.length)
      // the pinned DID's next sync advances (to the commit the killed one was after)
      // and releases its list: nothing left over
      await advance(reopened, kept, next)
      assert.deepEqual(await stagingKeys(reopened), [])
      assert.deepEqual(await storedBlocks(reopened), hexes(next))
    } finally {
      await reopened.close()
    }
  })

  it('thousands of leftover blocks in many staging lists are all released when the store opens, held ones kept', async () => {
    const { dir, store } = await open()
    const repo = await EvolvingRepo.create(13, posts(20))
    const kept = await repo.version()
    await advance(store, undefined, kept)
    // a killed flood: 5,000 junk blocks over 40 staging lists (several release
    // chunks), one list also naming blocks the pinned repo holds
    await store.beginWrite()
    const stray = 'did:plc:strayfloodaaaaaaaaaaaaa'
    const junk = Array.from({ length: 5000 }, (_, i) => {
      const bytes = encodeCbor({ junk: i })
      return { cid: cidForBytes(bytes), bytes }
    })
    for (let i = 0; i < junk.length; i += 125) await store.putBlocks(stray, junk.slice(i, i + 125))
    await store.putBlocks(stray, kept.blocks.slice(0, 10))
    assert.equal((await storedBlocks(store)).length, kept.blocks.length + junk.length)
    await store.datastore.close()

    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await storedBlocks(reopened), hexes(kept))
      assert.deepEqual(await stagingKeys(reopened), [])
      assert.equal(await reopened.holds.hasCandidates(), false)
    } finally {
      await reopened.close()
    }
    // and opening again finds nothing more to do
    const again = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await storedBlocks(again), hexes(kept))
    } finally {
      await again.close()
    }
  })

  it('a failed sync of thousands of blocks: every one becomes a candidate and is collected, held ones kept', async () => {
    const { store } = await open()
    const repo = await EvolvingRepo.create(14, posts(20))
    const kept = await repo.version()
    await advance(store, undefined, kept)
    const release = await store.beginWrite()
    const junk = Array.from({ length: 3000 }, (_, i) => {
      const bytes = encodeCbor({ failed: i })
      return { cid: cidForBytes(bytes), bytes }
    })
    for (let i = 0; i < junk.length; i += 100) await store.putBlocks(kept.did, junk.slice(i, i + 100))
    await store.putBlocks(kept.did, kept.blocks)
    const { candidates } = await store.discardStaged(kept.did)
    assert.equal(candidates, junk.length + kept.blocks.length)
    await release()
    try {
      assert.deepEqual(await storedBlocks(store), hexes(kept))
      assert.deepEqual(await stagingKeys(store), [])
      assert.equal(await store.holds.hasCandidates(), false)
    } finally {
      await store.close()
    }
  })

  it('opening a store with no staging list left collects nothing', async () => {
    const { dir, store } = await open()
    const repo = await EvolvingRepo.create(12, posts(10))
    const v1 = await repo.version()
    await advance(store, undefined, v1)
    await store.close()
    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await storedBlocks(reopened), hexes(v1))
      assert.deepEqual(await stagingKeys(reopened), [])
    } finally {
      await reopened.close()
    }
  })

  it('candidates of an interrupted collection are collected after reopening', async () => {
    const { dir, store } = await open()
    const repo = await EvolvingRepo.create(8, posts(30))
    const v1 = await repo.version()
    await advance(store, undefined, v1)
    const v2 = await repo.write([{ action: 'update', value: post(posts(30)[0].rkey, 'edited') }])
    const { candidates } = await advance(store, v1, v2, { collect: false })
    assert.ok(candidates > 0)
    await store.close()
    const reopened = await MirrorStore.open(dir)
    try {
      assert.deepEqual(await storedBlocks(reopened), union(hexes(v1), hexes(v2)))
      await reopened.collectGarbage()
      assert.deepEqual(await storedBlocks(reopened), hexes(v2))
    } finally {
      await reopened.close()
    }
  })

  it('releasing a repo whose tree is damaged still drops all its holds', async () => {
    const { store } = await open()
    try {
      const repo = await EvolvingRepo.create(9, posts(60))
      const v1 = await repo.version()
      await advance(store, undefined, v1)
      // lose the MST root file: the repo cannot be walked any more
      await removeRawBlock(store, v1.data)
      await syncerlessUnpin(store, v1.did)
      assert.equal(await store.holds.holdsAny(v1.did), false)
      assert.deepEqual(await storedBlocks(store), [])
    } finally {
      await store.close()
    }
  })

  it('a tree with a node reached twice is refused, not counted twice, and still released whole', { timeout: 60_000 }, async () => {
    const { store } = await open()
    try {
      // 3^40 paths through 40 nodes: a count that followed every link would not end
      const hostile = hostileRepo(40)
      const release = await store.beginWrite()
      await store.putBlocks(hostile.did, hostile.blocks)
      await assert.rejects(repoBlocksDelta(store.blocks, hostile.commit), (err: Error & { cid?: string }) => {
        assert.equal(err.name, 'MstInvalidError')
        assert.match(err.message, /reached twice/)
        assert.equal(err.cid, hostile.shared.toString())
        return true
      })
      // held as a sync that trusted it would have held it: each block once
      const delta = new HoldDelta()
      for (const { cid } of hostile.blocks) delta.add(cid)
      await store.commitRepo({ did: hostile.did, commit: hostile.commit.toString(), rev: '3l3qo2vutsw2b', data: hostile.data.toString(), status: 'active', syncedAt: new Date().toISOString() }, delta, { pin: true, fresh: true })
      await release()
      await syncerlessUnpin(store, hostile.did)
      assert.equal(await store.holds.holdsAny(hostile.did), false)
      assert.deepEqual(await storedBlocks(store), [])
    } finally {
      await store.close()
    }
  })
})

/** Every staging key in the store's datastore. */
async function stagingKeys (store: MirrorStore): Promise<string[]> {
  return await store.datastore.db.keys({ gte: holdKeys.stagedAll, lt: holdKeys.stagedAll + '\xff' }).all()
}

async function syncerlessUnpin (store: MirrorStore, did: string): Promise<void> {
  const release = await store.beginWrite()
  try {
    await store.releaseRepo(did, { unpin: true })
  } finally {
    await release()
  }
}
