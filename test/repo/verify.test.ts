import { describe, it, before } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { verifyRepoCar as atprotoVerifyRepoCar } from '@atproto/repo'
import { CID } from 'multiformats/cid'
import { MemoryBlockStore } from '../../src/repo/block-store.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { verifyRepo, verifyRepoCar, type RepoCarSummary, type VerifyRepoOptions } from '../../src/repo/verify.ts'
import {
  assembleRepo, dropBlock, findNodes, fixtureKeypair, flipByteInBlock, generateRepo, joinCar,
  keyWithHeightAfter, openRepo, splitCar, type GeneratedRepo
} from './fixtures.ts'

async function verifyListing (car: Uint8Array | AsyncIterable<Uint8Array>, options: VerifyRepoOptions = {}): Promise<{ summary: RepoCarSummary, records: Array<{ rpath: string, cid: string }> }> {
  const records: Array<{ rpath: string, cid: string }> = []
  const summary = await verifyRepoCar(car, { ...options, onRecord: (rpath, cid) => records.push({ rpath, cid: cid.toString() }) })
  return { summary, records }
}

async function * chunked (bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

const generated = new Map<string, Promise<GeneratedRepo>>()

/** Generating a 2000-record repo takes most of a second: each one is made once per file. */
async function fixture (options: Parameters<typeof generateRepo>[0]): Promise<GeneratedRepo> {
  const id = JSON.stringify(options)
  let repo = generated.get(id)
  if (repo === undefined) {
    repo = generateRepo(options)
    generated.set(id, repo)
  }
  return await repo
}

/** Runs `fn` and returns the error it throws (failing if it does not). */
async function rejection (fn: () => Promise<unknown>): Promise<Error> {
  try {
    await fn()
  } catch (err) {
    return err as Error
  }
  assert.fail('expected a rejection')
}

describe('verifyRepoCar agrees with @atproto/repo', () => {
  const cases = [
    { keyType: 'k256', records: 0 },
    { keyType: 'k256', records: 1 },
    { keyType: 'k256', records: 2000 },
    { keyType: 'p256', records: 0 },
    { keyType: 'p256', records: 1 },
    { keyType: 'p256', records: 2000 }
  ] as const
  for (const { keyType, records: count } of cases) {
    it(`${keyType} key, ${count} records`, async () => {
      const repo = await fixture({ keyType, records: count, seed: 7 })
      // the reference accepts it too, with the same records
      const reference = await atprotoVerifyRepoCar(repo.car, repo.did, repo.didKey)
      assert.equal(reference.creates.length, count)

      const { summary, records } = await verifyListing(repo.car, { did: repo.did, key: parseDidKey(repo.didKey) })
      assert.deepEqual(records, repo.records)
      const referenceRecords = reference.creates.map(op => ({ rpath: `${op.collection}/${op.rkey}`, cid: op.cid.toString() }))
        .sort((a, b) => a.rpath < b.rpath ? -1 : a.rpath > b.rpath ? 1 : 0)
      assert.deepEqual(records, referenceRecords)

      const parts = openRepo(repo.car)
      assert.equal(summary.did, repo.did)
      assert.equal(summary.rev, repo.rev)
      assert.equal(summary.commit.toString(), repo.commit)
      assert.equal(summary.data.toString(), repo.data)
      assert.equal(summary.records, count)
      assert.equal(summary.signature, 'verified')
      assert.equal(summary.blocks, parts.blocks.size)
      assert.equal(summary.blocks, 1 + parts.nodeCids.length + new Set(parts.recordCids).size)
      assert.equal(summary.bytes, [...parts.blocks.values()].reduce((sum, block) => sum + block.bytes.length, 0))
      assert.equal(summary.carBytes, repo.car.length)
      assert.equal(summary.carBlocks, parts.blocks.size)
      assert.equal(summary.unreachableBlocks, 0)
    })
  }
})

describe('verifyRepoCar on a valid repo', () => {
  let repo: GeneratedRepo
  before(async () => { repo = await generateRepo({ records: 300, seed: 3 }) })

  it('says the signature is unchecked without a key', async () => {
    const summary = await verifyRepoCar(repo.car)
    assert.equal(summary.signature, 'unchecked')
    assert.equal(summary.records, 300)
  })

  it('reads a CAR streamed in small chunks', async () => {
    const whole = await verifyListing(repo.car, { key: parseDidKey(repo.didKey) })
    const streamed = await verifyListing(chunked(repo.car, 997), { key: parseDidKey(repo.didKey) })
    assert.deepEqual(streamed.records, whole.records)
    assert.deepEqual({ ...streamed.summary, commit: String(streamed.summary.commit), data: String(streamed.summary.data) },
      { ...whole.summary, commit: String(whole.summary.commit), data: String(whole.summary.data) })
  })

  it('counts blocks the commit does not reach', async () => {
    const { roots, blocks } = splitCar(repo.car)
    const extra = dagCbor.encode({ $type: 'app.bsky.feed.post', text: 'not in the tree', createdAt: '2024-01-01T00:00:00.000Z' })
    const car = joinCar(roots, [...blocks, { cid: cidForBytes(extra), bytes: extra }])
    const summary = await verifyRepoCar(car, { key: parseDidKey(repo.didKey) })
    assert.equal(summary.unreachableBlocks, 1)
    assert.equal(summary.carBlocks, blocks.length + 1)
    assert.equal(summary.blocks, blocks.length)
  })

  it('tolerates duplicate blocks and any block order', async () => {
    const { roots, blocks } = splitCar(repo.car)
    const shuffled = [...blocks].reverse()
    const car = joinCar(roots, [...shuffled, blocks[5], blocks[0]])
    const summary = await verifyRepoCar(car, { key: parseDidKey(repo.didKey) })
    assert.equal(summary.carBlocks, blocks.length)
    assert.equal(summary.records, 300)
  })

  it('reports progress', async () => {
    const events: string[] = []
    await verifyRepoCar(repo.car, { onProgress: event => events.push(event.type) })
    assert.ok(events.includes('read'))
    assert.ok(events.includes('walk'))
  })

  it('stops when aborted', async () => {
    const controller = new AbortController()
    controller.abort()
    const err = await rejection(async () => await verifyRepoCar(repo.car, { signal: controller.signal }))
    assert.equal(err.name, 'AbortError')
  })

  it('verifyRepo checks a block store the same way', async () => {
    const store = new MemoryBlockStore()
    for (const block of splitCar(repo.car).blocks) store.put(block.cid, block.bytes)
    const summary = await verifyRepo(store, CID.parse(repo.commit), { did: repo.did, key: parseDidKey(repo.didKey) })
    const fromCar = await verifyRepoCar(repo.car)
    assert.equal(summary.records, 300)
    assert.equal(summary.signature, 'verified')
    assert.equal(summary.blocks, fromCar.blocks)
    assert.equal(summary.bytes, fromCar.bytes)
  })

  it('verifyRepo hash-checks blocks read from an untrusted store', async () => {
    const parts = openRepo(repo.car)
    const store = new MemoryBlockStore({ verified: true })
    const target = parts.recordCids[10]
    for (const block of parts.blocks.values()) {
      const bytes = block.cid.toString() === target ? Uint8Array.from(block.bytes, (b, i) => i === 3 ? b ^ 1 : b) : block.bytes
      store.put(block.cid, bytes)
    }
    const err = await rejection(async () => await verifyRepo(store, parts.commitCid, { key: parseDidKey(repo.didKey) }))
    assert.equal(err.name, 'CidMismatchError')
    // trusted: the store vouches for its blocks and they are not hashed again
    const trusted = await verifyRepo(store, parts.commitCid, { trusted: true, records: 'hash' })
    assert.equal(trusted.records, 300)
  })

  it('verifyRepo names a missing commit', async () => {
    const err = await rejection(async () => await verifyRepo(new MemoryBlockStore(), CID.parse(repo.commit)))
    assert.equal(err.name, 'MissingBlockError')
  })
})

describe('verifyRepoCar rejects tampered repos', () => {
  let repo: GeneratedRepo
  before(async () => { repo = await fixture({ keyType: 'k256', records: 2000, seed: 7 }) })

  const check = async (car: Uint8Array, options: VerifyRepoOptions = {}): Promise<Error> =>
    await rejection(async () => await verifyRepoCar(car, { did: repo.did, key: parseDidKey(repo.didKey), ...options }))

  it('a flipped byte in a record block: CidMismatchError', async () => {
    const parts = openRepo(repo.car)
    const err = await check(flipByteInBlock(repo.car, parts.recordCids[1234]))
    assert.equal(err.name, 'CidMismatchError')
  })

  it('a flipped byte in an MST node: CidMismatchError', async () => {
    const parts = openRepo(repo.car)
    const err = await check(flipByteInBlock(repo.car, parts.nodeCids[parts.nodeCids.length >> 1]))
    assert.equal(err.name, 'CidMismatchError')
  })

  it('a flipped byte in the commit: CidMismatchError', async () => {
    const err = await check(flipByteInBlock(repo.car, repo.commit))
    assert.equal(err.name, 'CidMismatchError')
  })

  it('a dropped record block: MissingBlockError', async () => {
    const parts = openRepo(repo.car)
    const cid = parts.recordCids[777]
    const err = await check(dropBlock(repo.car, cid))
    assert.equal(err.name, 'MissingBlockError')
    assert.equal((err as Error & { cid: string }).cid, cid)
  })

  it('a dropped MST node: MissingBlockError', async () => {
    const parts = openRepo(repo.car)
    const cid = parts.nodeCids[parts.nodeCids.length - 1]
    const err = await check(dropBlock(repo.car, cid))
    assert.equal(err.name, 'MissingBlockError')
    assert.equal((err as Error & { cid: string }).cid, cid)
  })

  it('a dropped commit: MissingBlockError', async () => {
    const err = await check(dropBlock(repo.car, repo.commit))
    assert.equal(err.name, 'MissingBlockError')
  })

  it('a commit re-signed with another key: CommitSignatureError', async () => {
    const other = await fixtureKeypair('k256', 999)
    const { car } = await assembleRepo(openRepo(repo.car), other)
    const err = await check(car)
    assert.equal(err.name, 'CommitSignatureError')
    // the forged repo is otherwise complete: without the key it verifies
    assert.equal((await verifyRepoCar(car)).signature, 'unchecked')
  })

  it('a commit for another DID: CommitDidMismatchError', async () => {
    const err = await check(repo.car, { did: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' })
    assert.equal(err.name, 'CommitDidMismatchError')
  })

  it('reordered MST entries, hashes fixed up and re-signed: MstInvalidError', async () => {
    const parts = openRepo(repo.car)
    const [node] = findNodes(parts.tree, n => n.layer === 0 && n.left === null && n.entries.length >= 2)
    const [a, b] = node.entries
    node.entries[0] = b
    node.entries[1] = a
    const { car } = await assembleRepo(parts, repo.keypair)
    const err = await check(car)
    assert.equal(err.name, 'MstInvalidError')
  })

  it('a key at the wrong height, hashes fixed up and re-signed: MstInvalidError', async () => {
    const parts = openRepo(repo.car)
    const [node] = findNodes(parts.tree, n => n.layer === 0 && n.entries.length >= 2)
    const key = keyWithHeightAfter(node.entries[0].key, 1)
    assert.ok(key < node.entries[1].key)
    node.entries.splice(1, 0, { key, value: node.entries[0].value, right: null })
    const { car } = await assembleRepo(parts, repo.keypair)
    const err = await check(car)
    assert.equal(err.name, 'MstInvalidError')
  })

  it('commit version 2, re-signed: CommitInvalidError', async () => {
    const { car } = await assembleRepo(openRepo(repo.car), repo.keypair, { version: 2 })
    const err = await check(car)
    assert.equal(err.name, 'CommitInvalidError')
  })

  it('an MST node named as the commit: CommitInvalidError', async () => {
    const { blocks } = splitCar(repo.car)
    const err = await check(joinCar([CID.parse(repo.data)], blocks))
    assert.equal(err.name, 'CommitInvalidError')
  })

  it('a truncated CAR: CarParseError', async () => {
    const err = await check(repo.car.subarray(0, repo.car.length - 100))
    assert.equal(err.name, 'CarParseError')
  })

  it('a record that is not a map, hashes fixed up and re-signed: CborDecodeError', async () => {
    const parts = openRepo(repo.car)
    const bytes = dagCbor.encode(['not', 'a', 'record'])
    const cid = cidForBytes(bytes)
    const [node] = findNodes(parts.tree, n => n.entries.length > 0)
    node.entries[0].value = cid
    parts.blocks.set(cid.toString(), { cid, bytes })
    const { car } = await assembleRepo(parts, repo.keypair)
    const err = await check(car)
    assert.equal(err.name, 'CborDecodeError')
    // the cheap check catches it too
    assert.equal((await check(car, { records: 'hash' })).name, 'CborDecodeError')
  })

  it('a record under a raw CID, hashes fixed up and re-signed: UnsupportedCidError', async () => {
    const parts = openRepo(repo.car)
    const [node] = findNodes(parts.tree, n => n.entries.length > 0)
    const bytes = parts.blocks.get(node.entries[0].value.toString())!.bytes
    const cid = cidForBytes(bytes, RAW)
    node.entries[0].value = cid
    parts.blocks.set(cid.toString(), { cid, bytes })
    const { car } = await assembleRepo(parts, repo.keypair)
    const err = await check(car)
    assert.equal(err.name, 'UnsupportedCidError')
  })
})
