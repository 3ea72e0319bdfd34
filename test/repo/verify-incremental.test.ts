/**
 * verifyIncremental: an advance of a verified repo checked in proportion to the
 * change. Honest changes come from the reference implementation (@atproto/repo,
 * through EvolvingRepo); hostile trees are the stored tree rearranged and
 * re-signed with the repo's own key (test/helpers/car-tools.ts), so the
 * structure is the only thing wrong with them.
 */
import { describe, it, before } from 'node:test'
import assert from 'node:assert/strict'
import type { Keypair } from '@atproto/crypto'
import { CID } from 'multiformats/cid'
import { MemoryBlockStore, OverlayBlockStore, type Block } from '../../src/repo/block-store.ts'
import { parseDidKey, type PublicKey } from '../../src/repo/keys.ts'
import { verifyIncremental } from '../../src/repo/verify-incremental.ts'
import { verifyRepo } from '../../src/repo/verify.ts'
import { fixtureKeypair, prng } from '../../support/generated-repo.ts'
import { assembleRepo, findNodes, keyWithHeightAfter, openRepo, splitCar, type RepoParts, type TreeNode } from '../helpers/car-tools.ts'
import { EvolvingRepo, post, posts, type RepoVersion } from '../helpers/evolving-repo.ts'

type NamedError = Error & { did?: string, rev?: string, rpath?: string }

async function thrown (fn: () => Promise<unknown>): Promise<NamedError> {
  try {
    await fn()
  } catch (err) {
    return err as NamedError
  }
  assert.fail('expected an error')
}

/** The store holding `version`, verified whole (what a stored repo is). */
async function storedRepo (version: RepoVersion, key: PublicKey): Promise<MemoryBlockStore> {
  const store = new MemoryBlockStore()
  for (const block of version.blocks) store.put(block.cid, block.bytes)
  await verifyRepo(store, version.commit, { key, did: version.did })
  return store
}

/** The blocks of `blocks` the store lacks, over the store: what a `#commit` event brings. */
function overlay (stored: MemoryBlockStore, blocks: Iterable<Block>, drop?: CID): { store: OverlayBlockStore, added: MemoryBlockStore } {
  const added = new MemoryBlockStore()
  for (const block of blocks) {
    if (stored.has(block.cid) || (drop !== undefined && block.cid.equals(drop))) continue
    added.put(block.cid, block.bytes)
  }
  return { store: new OverlayBlockStore(added, stored), added }
}

function cidStrings (cids: Iterable<{ toString: () => string }>): string[] {
  return [...cids].map(String).sort()
}

const COLLECTION = 'app.bsky.feed.post/'

describe('verifyIncremental on honest changes (@atproto/repo)', () => {
  it('a one-record create reads a few blocks and returns exactly the blocks the reference adds', async () => {
    const repo = await EvolvingRepo.create(61, posts(500, 'old'))
    const v1 = await repo.version()
    const stored = await storedRepo(v1, repo.key)
    const v2 = await repo.write([{ action: 'create', value: post('3zzzzzzzzzzz2', 'new') }])
    const { store, added } = overlay(stored, v2.blocks)
    const result = await verifyIncremental({ oldData: v1.data, commit: v2.commit, blocks: store, key: repo.key, did: repo.did })
    assert.equal(result.rev, v2.rev)
    assert.ok(result.data.equals(v2.data))
    assert.deepEqual(result.recordOps.map(op => [op.rpath, op.oldValue, op.newValue !== null]), [[`${COLLECTION}3zzzzzzzzzzz2`, null, true]])
    assert.equal(result.recordDelta, 1)
    // the commit, the new path's nodes and the record: everything the change brings, nothing else
    assert.deepEqual(cidStrings(result.blocks.map(b => b.cid)), cidStrings([...added.blocks()].map(b => b.cid)))
    const full = await verifyRepo(store, v2.commit, { key: repo.key })
    assert.ok(result.blocksRead < 25, `read ${result.blocksRead} blocks`)
    assert.ok(full.blocks > 600, `the whole repo is ${full.blocks} blocks`)
  })

  it('creates, updates and deletes across the tree: the ops, the record count and the blocks agree with the reference', async () => {
    const repo = await EvolvingRepo.create(62, posts(400, 'old'))
    const v1 = await repo.version()
    const stored = await storedRepo(v1, repo.key)
    const existing = posts(400, 'old')
    const v2 = await repo.write([
      ...posts(12, 'created', 1000).map(value => ({ action: 'create' as const, value })),
      ...existing.slice(0, 200).filter((_, i) => i % 25 === 0).map(value => ({ action: 'update' as const, value: { ...value, record: { ...value.record, text: 'edited' } } })),
      ...existing.slice(200).filter((_, i) => i % 20 === 0).map(value => ({ action: 'delete' as const, collection: value.collection, rkey: value.rkey }))
    ])
    const { store, added } = overlay(stored, v2.blocks)
    const result = await verifyIncremental({ oldData: v1.data, commit: v2.commit, blocks: store, key: repo.key })
    const count = (kind: 'create' | 'update' | 'delete'): number => result.recordOps.filter(op => kind === 'create' ? op.oldValue === null : kind === 'delete' ? op.newValue === null : op.oldValue !== null && op.newValue !== null).length
    assert.deepEqual([count('create'), count('update'), count('delete')], [12, 8, 10])
    assert.equal(result.recordDelta, 2)
    assert.deepEqual(cidStrings(result.blocks.map(b => b.cid)), cidStrings([...added.blocks()].map(b => b.cid)))
    const full = await verifyRepo(store, v2.commit, { key: repo.key })
    assert.equal(full.records, 402)
  })

  it('a key above the root and keys between a node\'s entries (reused subtrees in narrower ranges) are accepted', async () => {
    const repo = await EvolvingRepo.create(63, posts(300, 'old'))
    const v1 = await repo.version()
    const stored = await storedRepo(v1, repo.key)
    const tree = openRepo(v1.car).tree
    const rkeyOf = (key: string): string => key.slice(COLLECTION.length)
    // above the root: the old root becomes a subtree with an upper or lower bound
    const high = keyWithHeightAfter(tree.entries[0].key, tree.layer + 1)
    // one layer below the root, inside a subtree: its neighbours keep their CIDs in narrower ranges
    const child = tree.entries[0].right as TreeNode
    const mid = keyWithHeightAfter(child.entries[0].key, child.layer)
    const v2 = await repo.write([{ action: 'create', value: post(rkeyOf(high), 'high') }, { action: 'create', value: post(rkeyOf(mid), 'mid') }])
    const { store } = overlay(stored, v2.blocks)
    const result = await verifyIncremental({ oldData: v1.data, commit: v2.commit, blocks: store, key: repo.key })
    assert.deepEqual(result.recordOps.map(op => op.rpath), [high, mid].sort())
    await verifyRepo(store, v2.commit, { key: repo.key })
  })

  it('without a stored tree every node is created and checked', async () => {
    const repo = await EvolvingRepo.create(64, posts(50, 'old'))
    const v1 = await repo.version()
    const store = new MemoryBlockStore()
    for (const block of v1.blocks) store.put(block.cid, block.bytes)
    const result = await verifyIncremental({ oldData: null, commit: v1.commit, blocks: store, key: repo.key })
    assert.equal(result.recordDelta, 50)
    assert.equal(result.blocks.length, v1.blocks.length)
  })
})

describe('verifyIncremental refuses', () => {
  let repo: EvolvingRepo
  let v1: RepoVersion
  let stored: MemoryBlockStore

  before(async () => {
    repo = await EvolvingRepo.create(65, posts(400, 'old'))
    v1 = await repo.version()
    stored = await storedRepo(v1, repo.key)
  })

  /** The stored tree, changed by `edit`, re-signed (by `keypair`, default the repo's), as the blocks of a new commit. */
  async function hostile (edit: (parts: RepoParts) => void, keypair?: Keypair): Promise<{ commit: CID, blocks: Block[] }> {
    const parts = openRepo(v1.car)
    edit(parts)
    const { car, commitCid } = await assembleRepo(parts, keypair ?? repo.keypair, { rev: '3zzzzzzzzzzz2' })
    return { commit: commitCid, blocks: splitCar(car).blocks }
  }

  /** Verifies the hostile commit both ways: the incremental check and the whole one must both refuse, alike. */
  async function refused (change: { commit: CID, blocks: Block[] }, drop?: CID): Promise<NamedError> {
    const { store } = overlay(stored, change.blocks, drop)
    const err = await thrown(async () => await verifyIncremental({ oldData: v1.data, commit: change.commit, blocks: store, key: repo.key, did: repo.did }))
    const whole = await thrown(async () => await verifyRepo(store, change.commit, { key: repo.key }))
    assert.equal(err.name, whole.name, `incremental: ${err.message}; whole: ${whole.message}`)
    assert.equal(err.did, repo.did)
    assert.equal(err.rev, '3zzzzzzzzzzz2')
    return err
  }

  it('two stored subtrees swapped (each in the other\'s key range): MstInvalidError', async () => {
    const change = await hostile(({ tree }) => {
      const left = tree.left
      tree.left = tree.entries[0].right
      tree.entries[0].right = left
    })
    const err = await refused(change)
    assert.equal(err.name, 'MstInvalidError')
    assert.match(err.message, /previous tree reused|not (after|before)/)
  })

  it('a new key between two entries with the stored subtree there left unsplit (keys past the new key): MstInvalidError', async () => {
    const change = await hostile(({ tree }) => {
      // the root's subtrees in key order; the new key goes right after the first one with two keys or more
      const i = [tree.left, ...tree.entries.map(entry => entry.right)].findIndex(child => child !== null && child.entries.length > 1)
      const straddled = (i === 0 ? tree.left : tree.entries[i - 1].right) as TreeNode
      const key = keyWithHeightAfter(straddled.entries[0].key, tree.layer)
      assert.ok(key < straddled.entries[1].key)
      tree.entries.splice(i, 0, { key, value: tree.entries[0].value, right: null })
    })
    const err = await refused(change)
    assert.equal(err.name, 'MstInvalidError')
    assert.match(err.message, /reused with key not before/)
  })

  it('a stored subtree linked one layer too high (a layer skipped): MstInvalidError', async () => {
    const change = await hostile(({ tree }) => {
      const [parent] = findNodes(tree.left as TreeNode, node => node.left !== null && node.layer === tree.layer - 1)
      tree.left = parent.left
    })
    const err = await refused(change)
    assert.equal(err.name, 'MstInvalidError')
    assert.match(err.message, /key height \d+ does not match node layer/)
  })

  it('a stored subtree linked twice: MstInvalidError', async () => {
    const change = await hostile(({ tree }) => {
      tree.entries[1].right = tree.entries[0].right
    })
    const err = await refused(change)
    assert.equal(err.name, 'MstInvalidError')
  })

  it('a new record missing: MissingBlockError naming its path', async () => {
    const fresh = await EvolvingRepo.create(65, posts(400, 'old'))
    const v2 = await fresh.write([{ action: 'create', value: post('3zzzzzzzzzzz2', 'missing') }])
    const record = v2.blocks.find(block => !stored.has(block.cid) && !block.cid.equals(v2.commit) && (block.bytes[0] & 0xe0) === 0xa0 && block.bytes[2] !== 0x65)
    assert.ok(record !== undefined)
    const { store } = overlay(stored, v2.blocks, record.cid)
    const err = await thrown(async () => await verifyIncremental({ oldData: v1.data, commit: v2.commit, blocks: store, key: repo.key }))
    assert.equal(err.name, 'MissingBlockError')
    assert.equal(err.rpath, `${COLLECTION}3zzzzzzzzzzz2`)
  })

  it('a commit signed by another key: CommitSignatureError', async () => {
    const change = await hostile(({ tree }) => {
      tree.entries[0].value = tree.entries[1].value
    }, await fixtureKeypair('k256', 99))
    const err = await refused(change)
    assert.equal(err.name, 'CommitSignatureError')
  })

  it('a commit for another DID: CommitDidMismatchError', async () => {
    const parts = openRepo(v1.car)
    const { car, commitCid } = await assembleRepo(parts, repo.keypair, { did: 'did:plc:otherotherotherotherothe', rev: '3zzzzzzzzzzz2' })
    const { store } = overlay(stored, splitCar(car).blocks)
    const err = await thrown(async () => await verifyIncremental({ oldData: v1.data, commit: commitCid, blocks: store, key: repo.key, did: repo.did }))
    assert.equal(err.name, 'CommitDidMismatchError')
  })

  it('a new block that does not hash to its CID, from an untrusted store: CidMismatchError', async () => {
    const fresh = await EvolvingRepo.create(65, posts(400, 'old'))
    const v2 = await fresh.write([{ action: 'create', value: post('3zzzzzzzzzzz2', 'spoiled') }])
    const spoiled = new Map<string, Uint8Array>()
    for (const block of v2.blocks) {
      if (stored.has(block.cid)) continue
      const bytes = Uint8Array.from(block.bytes)
      if (!block.cid.equals(v2.commit)) bytes[bytes.length - 1] ^= 1
      spoiled.set(block.cid.toString(), bytes)
    }
    const top = { get: (cid: CID) => spoiled.get(cid.toString()), has: (cid: CID) => spoiled.has(cid.toString()) }
    const err = await thrown(async () => await verifyIncremental({ oldData: v1.data, commit: v2.commit, blocks: new OverlayBlockStore(top, stored), key: repo.key }))
    assert.equal(err.name, 'CidMismatchError')
  })

  it('the stored tree is left as it was: it still verifies whole', async () => {
    const summary = await verifyRepo(stored, v1.commit, { key: parseDidKey(repo.keypair.did()) })
    assert.equal(summary.records, 400)
  })
})

describe('verifyIncremental agrees with whole verification on random rearrangements of the stored tree', () => {
  // The whole walk is the ground truth: for each seeded random change (subtrees
  // swapped or linked again anywhere, keys inserted at random heights without
  // splitting what they land in, entries dropped, values changed, several at once),
  // the incremental check must accept exactly when verifyRepo does.
  let repo: EvolvingRepo
  let v1: RepoVersion
  let stored: MemoryBlockStore

  before(async () => {
    repo = await EvolvingRepo.create(66, posts(300, 'old'))
    v1 = await repo.version()
    stored = await storedRepo(v1, repo.key)
  })

  interface Slot { node: TreeNode, index: number }
  const child = (slot: Slot): TreeNode | null => slot.index < 0 ? slot.node.left : slot.node.entries[slot.index].right
  const setChild = (slot: Slot, to: TreeNode | null): void => {
    if (slot.index < 0) slot.node.left = to
    else slot.node.entries[slot.index].right = to
  }
  const contains = (tree: TreeNode, node: TreeNode): boolean => findNodes(tree, n => n === node).length > 0

  function mutate (tree: TreeNode, random: () => number, records: CID[]): string {
    const nodes = findNodes(tree, () => true)
    const slots: Slot[] = nodes.flatMap(node => [{ node, index: -1 }, ...node.entries.map((_, index) => ({ node, index }))]).filter(slot => child(slot) !== null)
    const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)]
    const kind = Math.floor(random() * 5)
    if (kind === 0 || kind === 1) {
      const a = pick(slots)
      const b = pick(slots)
      const x = child(a) as TreeNode
      const y = child(b) as TreeNode
      if (x === y || contains(x, b.node) || contains(y, a.node)) return 'nothing'
      if (kind === 0) {
        setChild(a, y)
        setChild(b, x)
        return `swap L${x.layer}/L${y.layer}`
      }
      setChild(b, x)
      return `relink L${x.layer} over L${y.layer}`
    }
    if (kind === 2) {
      const node = pick(nodes)
      const anchor = node.entries.length > 0 ? pick(node.entries).key : pick(findNodes(node, n => n.entries.length > 0)).entries[0].key
      const height = random() < 0.6 ? node.layer : Math.floor(random() * 3)
      const key = keyWithHeightAfter(anchor, height)
      const at = node.entries.findIndex(entry => entry.key > key)
      node.entries.splice(at < 0 ? node.entries.length : at, 0, { key, value: pick(records), right: null })
      return `insert h${height} into L${node.layer}`
    }
    if (kind === 3) {
      const node = pick(nodes.filter(n => n.entries.length > 1))
      node.entries.splice(Math.floor(random() * node.entries.length), 1)
      return `drop entry of L${node.layer}`
    }
    const node = pick(nodes.filter(n => n.entries.length > 0))
    pick(node.entries).value = pick(records)
    return `value in L${node.layer}`
  }

  it('80 random changes: accepted or refused alike', async () => {
    const random = prng(2026)
    const records = openRepo(v1.car).recordCids.map(cid => CID.parse(cid))
    let accepted = 0
    let refusedCount = 0
    for (let i = 0; i < 80; i++) {
      const parts = openRepo(v1.car)
      const what: string[] = []
      const n = 1 + Math.floor(random() * 3)
      for (let j = 0; j < n; j++) what.push(mutate(parts.tree, random, records))
      const { car, commitCid } = await assembleRepo(parts, repo.keypair, { rev: '3zzzzzzzzzzz2' })
      const { store } = overlay(stored, splitCar(car).blocks)
      const whole = await verifyRepo(store, commitCid, { key: repo.key }).then(() => 'ok', (err: Error) => err.name)
      const incremental = await verifyIncremental({ oldData: v1.data, commit: commitCid, blocks: store, key: repo.key }).then(() => 'ok', (err: Error) => err.name)
      assert.equal(incremental, whole, `case ${i}: ${what.join(', ')}`)
      if (whole === 'ok') accepted++
      else refusedCount++
    }
    // both kinds occur, so the agreement says something either way
    assert.ok(accepted >= 10 && refusedCount >= 30, `${accepted} accepted, ${refusedCount} refused`)
  })
})
