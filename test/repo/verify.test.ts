import { describe, it, before } from 'node:test'
import assert from 'node:assert/strict'
import * as dagCbor from '@ipld/dag-cbor'
import { verifyRepoCar as atprotoVerifyRepoCar } from '@atproto/repo'
import { encode as cborgEncode } from 'cborg'
import { CID } from 'multiformats/cid'
import * as Digest from 'multiformats/hashes/digest'
import { MemoryBlockStore } from '../../src/repo/block-store.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { parseDidKey } from '../../src/repo/keys.ts'
import { walkMst } from '../../src/repo/mst/walk.ts'
import { loadCar, verifyRepo, verifyRepoCar, type RepoCarSummary, type VerifyRepoOptions } from '../../src/repo/verify.ts'
import { fixtureKeypair, generateRepo, type GeneratedRepo } from '../../support/generated-repo.ts'
import { assembleRepo, dropBlock, findNodes, flipByteInBlock, joinCar, keyWithHeightAfter, openRepo, splitCar } from '../helpers/car-tools.ts'
import { chunked } from '../helpers/bytes.ts'

async function verifyListing (car: Uint8Array | AsyncIterable<Uint8Array>, options: VerifyRepoOptions = {}): Promise<{ summary: RepoCarSummary, records: Array<{ rpath: string, cid: string }> }> {
  const records: Array<{ rpath: string, cid: string }> = []
  const summary = await verifyRepoCar(car, { ...options, onRecord: (rpath, cid) => records.push({ rpath, cid: cid.toString() }) })
  return { summary, records }
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

/** The same digest under the raw codec (0x55): the bytes hash alike, only the codec differs. */
function asRaw (cid: CID): CID {
  return CID.createV1(RAW, cid.multihash)
}

type NamedError = Error & { cid?: string, did?: string, rev?: string }

/** Asserts the error names the repo, as fields and at the end of its message. */
function assertNamesRepo (err: NamedError, repo: { did: string, rev: string }): void {
  assert.equal(err.did, repo.did, err.message)
  assert.equal(err.rev, repo.rev, err.message)
  assert.ok(err.message.endsWith(` did=${repo.did} rev=${repo.rev}`), err.message)
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

  it('accepts several roots, the first being the commit', async () => {
    const { blocks } = splitCar(repo.car)
    const parts = openRepo(repo.car)
    const roots = [parts.commitCid, CID.parse(repo.data), CID.parse(parts.recordCids[0])]
    const summary = await verifyRepoCar(joinCar(roots, blocks), { did: repo.did, key: parseDidKey(repo.didKey) })
    assert.equal(summary.commit.toString(), repo.commit)
    assert.equal(summary.signature, 'verified')
    assert.equal(summary.records, 300)
    assert.equal(summary.unreachableBlocks, 0)
  })

  it('takes only the first root as the commit, even when a later one is it', async () => {
    const { blocks } = splitCar(repo.car)
    const parts = openRepo(repo.car)
    const err = await rejection(async () => await verifyRepoCar(joinCar([CID.parse(parts.recordCids[0]), parts.commitCid], blocks)))
    assert.equal(err.name, 'CommitInvalidError')
    assert.equal((err as NamedError).cid, parts.recordCids[0])
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
    assert.equal((err as NamedError).cid, parts.recordCids[1234])
    // the commit block came first in the CAR, so the error can say whose repo it is
    assertNamesRepo(err, repo)
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
    assert.equal((err as NamedError).cid, cid)
    assertNamesRepo(err, repo)
    assert.match(err.message, /^missing record; cid=\S+ rpath=\S+ did=/)
  })

  it('a dropped MST node: MissingBlockError', async () => {
    const parts = openRepo(repo.car)
    const cid = parts.nodeCids[parts.nodeCids.length - 1]
    const err = await check(dropBlock(repo.car, cid))
    assert.equal(err.name, 'MissingBlockError')
    assert.equal((err as NamedError).cid, cid)
    assertNamesRepo(err, repo)
  })

  it('a dropped commit: MissingBlockError', async () => {
    const err = await check(dropBlock(repo.car, repo.commit))
    assert.equal(err.name, 'MissingBlockError')
    // nothing to name the repo by
    assert.equal((err as NamedError).did, undefined)
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
    assertNamesRepo(err, repo)
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
    assert.equal((err as NamedError).did, repo.did)
    assert.equal((err as NamedError).rev, repo.rev)
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
    assert.equal((err as NamedError).cid, cid.toString())
    assertNamesRepo(err, repo)
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
    assertNamesRepo(err, repo)
  })

  it('the raw-codec CID of the commit as first root: UnsupportedCidError', async () => {
    const { blocks } = splitCar(repo.car)
    const raw = asRaw(CID.parse(repo.commit))
    const err = await check(joinCar([raw], blocks))
    assert.equal(err.name, 'UnsupportedCidError')
    assert.equal((err as NamedError).cid, raw.toString())
    assert.match(err.message, /commit .*DAG-CBOR.*not codec 0x55/)
    // the same through a block store
    const store = new MemoryBlockStore()
    for (const block of blocks) store.put(block.cid, block.bytes)
    assert.equal((await rejection(async () => await verifyRepo(store, raw))).name, 'UnsupportedCidError')
  })

  it('commit data as the raw-codec CID of the MST root, re-signed: CommitInvalidError', async () => {
    const parts = openRepo(repo.car)
    parts.tree.codec = RAW
    const { car, data } = await assembleRepo(parts, repo.keypair)
    assert.equal(data.code, RAW)
    const err = await check(car)
    assert.equal(err.name, 'CommitInvalidError')
    assert.ok(err.message.includes(data.toString()), err.message)
    assert.equal((err as NamedError).rev, repo.rev)
  })

  it('a subtree link as the raw-codec CID of the node, re-signed: MstInvalidError', async () => {
    const parts = openRepo(repo.car)
    const [parent] = findNodes(parts.tree, n => n.left !== null)
    parent.left!.codec = RAW
    const { car } = await assembleRepo(parts, repo.keypair)
    const err = await check(car)
    assert.equal(err.name, 'MstInvalidError')
    assert.equal((err as NamedError).cid, parent.cid.toString())
    assert.match(err.message, /not a dag-cbor sha2-256 CIDv1/)
    assertNamesRepo(err, repo)
  })

  it('walkMst refuses a tree root named by a raw-codec CID: MstInvalidError', async () => {
    const { store } = await loadCar(repo.car)
    const raw = asRaw(CID.parse(repo.data))
    assert.ok(store.has(raw), 'the store finds the node under the raw CID')
    const err = await rejection(async () => { for await (const _ of walkMst(store, raw)) { /* walk */ } })
    assert.equal(err.name, 'MstInvalidError')
    assert.equal((err as NamedError).cid, raw.toString())
  })
})

describe('verifyRepoCar on records the specs leave flexible', () => {
  let repo: GeneratedRepo
  before(async () => { repo = await generateRepo({ records: 40, seed: 11 }) })

  /** Puts `bytes` in as the record of the first entry of the first node with entries, re-signed. */
  async function withRecord (bytes: Uint8Array): Promise<{ car: Uint8Array, rpath: string, cid: CID }> {
    const parts = openRepo(repo.car)
    const cid = cidForBytes(bytes)
    const [node] = findNodes(parts.tree, n => n.entries.length > 0)
    node.entries[0].value = cid
    parts.blocks.set(cid.toString(), { cid, bytes })
    const { car } = await assembleRepo(parts, repo.keypair)
    return { car, rpath: node.entries[0].key, cid }
  }

  it('a record with its map keys out of canonical order verifies, under its exact CID', async () => {
    const record = { $type: 'app.bsky.feed.post', text: 'keys in reverse order', createdAt: '2024-01-01T00:00:00.000Z', langs: ['en'] }
    // dag-cbor's own encoder with the key order reversed: everything else canonical
    const keyOf = (entry: unknown): string => {
      const token = (entry as [unknown])[0]
      return (Array.isArray(token) ? token[0] : token as { value: string }).value
    }
    const canonicalOrder = (a: string, b: string): number => a.length - b.length || (a < b ? -1 : a > b ? 1 : 0)
    const bytes = cborgEncode(record, { ...dagCbor.encodeOptions, mapSorter: (a, b) => -canonicalOrder(keyOf(a), keyOf(b)) })
    assert.ok(!Buffer.from(bytes).equals(dagCbor.encode(record)), 'the encoding is not canonical')
    const { car, rpath, cid } = await withRecord(bytes)
    const records: Array<{ rpath: string, cid: string }> = []
    const summary = await verifyRepoCar(car, { did: repo.did, key: parseDidKey(repo.didKey), onRecord: (path, link) => records.push({ rpath: path, cid: link.toString() }) })
    assert.equal(summary.records, 40)
    assert.deepEqual(records.find(r => r.rpath === rpath), { rpath, cid: cid.toString() })
    // the reference implementation accepts it too
    const reference = await atprotoVerifyRepoCar(car, repo.did, repo.didKey)
    assert.equal(reference.creates.find(op => `${op.collection}/${op.rkey}` === rpath)?.cid.toString(), cid.toString())
  })

  it('a record nested 100,000 levels deep verifies, as the reference accepts it (records are checked without recursion)', async () => {
    // {"d": {"d": … null …}, "$type": "com.example.deep"}, built byte by byte: a recursive encoder cannot
    const depth = 100_000
    const nested = new Uint8Array(depth * 3 + 1)
    for (let i = 0; i < depth; i++) nested.set([0xa1, 0x61, 0x64], i * 3)
    nested[nested.length - 1] = 0xf6
    const bytes = new Uint8Array(Buffer.concat([Uint8Array.of(0xa2, 0x61, 0x64), nested, dagCbor.encode('$type'), dagCbor.encode('com.example.deep')]))
    const { car, rpath, cid } = await withRecord(bytes)
    let seen: string | undefined
    const summary = await verifyRepoCar(car, { did: repo.did, key: parseDidKey(repo.didKey), onRecord: (path, link) => { if (path === rpath) seen = link.toString() } })
    assert.equal(summary.records, 40)
    assert.equal(seen, cid.toString())
    const reference = await atprotoVerifyRepoCar(car, repo.did, repo.didKey)
    assert.equal(reference.creates.find(op => `${op.collection}/${op.rkey}` === rpath)?.cid.toString(), cid.toString())
  })

  it('a deep record that is not DRISL is still refused', async () => {
    const nested = new Uint8Array(50_000 * 3)
    for (let i = 0; i < 50_000; i++) nested.set([0xa1, 0x61, 0x64], i * 3)
    // the innermost value is a float, which the data model does not have
    const bytes = new Uint8Array(Buffer.concat([Uint8Array.of(0xa1, 0x61, 0x64), nested, Uint8Array.of(0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0)]))
    const { car, rpath } = await withRecord(bytes)
    await assert.rejects(verifyRepoCar(car, { did: repo.did, key: parseDidKey(repo.didKey) }), (err: Error) => {
      assert.equal(err.name, 'CborDecodeError')
      assert.match(err.message, /float/)
      return rpath.length > 0
    })
  })

  it('a record whose links are CIDs outside the blessed set verifies', async () => {
    const digest = Digest.create(0x12, new Uint8Array(32).fill(7))
    const record = {
      $type: 'com.example.links',
      v0: CID.createV0(digest),
      dagPb: CID.createV1(0x70, digest),
      sha512: CID.createV1(0x71, Digest.create(0x13, new Uint8Array(64).fill(9))),
      blessed: CID.createV1(RAW, digest)
    }
    const { car, rpath, cid } = await withRecord(dagCbor.encode(record))
    let seen: string | undefined
    const summary = await verifyRepoCar(car, { key: parseDidKey(repo.didKey), onRecord: (path, link) => { if (path === rpath) seen = link.toString() } })
    assert.equal(summary.records, 40)
    assert.equal(seen, cid.toString())
  })
})
